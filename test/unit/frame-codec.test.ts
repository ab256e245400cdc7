import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { type EdgemuxErrorCode, isEdgemuxError } from '../../shared/errors.js';
import {
  ACK_PAYLOAD_SIZE,
  type ControlFrame,
  decodeFrames,
  encodeFrame,
  FRAME_HEADER_SIZE,
  type Frame,
  FrameDecoder,
  type FrameHandler,
  FrameType,
  PROTOCOL_VERSION,
  writeFrameHeader,
} from '../../shared/frame-codec.js';

const MAX_PAYLOAD = 64 * 1024;
const packr = new Packr({ useRecords: false, moreTypes: false });

function errorCodeOf(fn: () => unknown): EdgemuxErrorCode | 'no error' | 'not an EdgemuxError' {
  try {
    fn();
  } catch (err) {
    return isEdgemuxError(err) ? err.code : 'not an EdgemuxError';
  }
  return 'no error';
}

/** A frame with an arbitrary header and payload, built by hand. */
function rawFrame(type: number, streamId: number, payload: Buffer): Buffer {
  const out = Buffer.alloc(FRAME_HEADER_SIZE + payload.length);
  writeFrameHeader(out, 0, type, streamId, payload.length);
  payload.copy(out, FRAME_HEADER_SIZE);
  return out;
}

function controlFrameWithBody(type: number, body: unknown): Buffer {
  return rawFrame(type, 0, packr.pack(body));
}

function splitAt(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = cuts.map((cut) => cut % (bytes.length + 1)).sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let start = 0;
  for (const point of points) {
    chunks.push(bytes.subarray(start, point));
    start = point;
  }
  chunks.push(bytes.subarray(start));
  return chunks;
}

/** Streams chunks through one FrameDecoder, copying DATA payloads (they are views of the chunks). */
function decodeChunks(chunks: Buffer[], maxPayload = MAX_PAYLOAD): Frame[] {
  const frames: Frame[] = [];
  const decoder = new FrameDecoder(maxPayload);
  const handler: FrameHandler = {
    data: (streamId, payload) => frames.push({ type: FrameType.DATA, streamId, payload: Buffer.from(payload) }),
    ack: (streamId, consumed) => frames.push({ type: FrameType.ACK, streamId, consumed }),
    control: (frame) => frames.push(frame),
  };
  for (const chunk of chunks) decoder.push(chunk, handler);
  expect(decoder.pendingBytes).toBe(0);
  return frames;
}

// ---- arbitraries ---------------------------------------------------------

const streamId = fc.integer({ min: 0, max: 0xffff_ffff });
const text = fc.string({ unit: 'binary', maxLength: 40 });
/** Counters, windows and timestamps: integers in the range a JavaScript number holds exactly. */
const count = fc.oneof(fc.nat({ max: 0xffff_ffff }), fc.maxSafeNat());

const dataFrame: fc.Arbitrary<Frame> = fc
  .record({ streamId, payload: fc.uint8Array({ maxLength: 2_000 }) })
  .map(({ streamId: id, payload }) => ({ type: FrameType.DATA, streamId: id, payload: Buffer.from(payload) }));

const ackFrame: fc.Arbitrary<Frame> = fc
  .record({ streamId, consumed: fc.oneof(fc.constantFrom(0, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1), fc.maxSafeNat()) })
  .map(({ streamId: id, consumed }) => ({ type: FrameType.ACK, streamId: id, consumed }));

const helloFrame: fc.Arbitrary<ControlFrame> = fc
  .record({
    version: fc.nat({ max: 255 }),
    role: fc.constantFrom('agent' as const, 'hub' as const),
    id: text,
    heartbeatMs: count,
    streamWindow: count,
    maxFramePayload: count,
    instance: text,
  })
  .map((body) => ({ type: FrameType.HELLO, streamId: 0, body }));

const openFrame: fc.Arbitrary<ControlFrame> = fc
  .record({
    streamId,
    clientId: text,
    window: count,
    keepalive: fc.nat({ max: 0xffff }),
    protocolVersion: fc.constantFrom(3, 4, 5),
    cleanSession: fc.boolean(),
    username: fc.option(text, { nil: undefined }),
  })
  .map(({ streamId: id, username, ...rest }) => ({
    type: FrameType.OPEN,
    streamId: id,
    body: username === undefined ? rest : { ...rest, username },
  }));

const acceptFrame: fc.Arbitrary<ControlFrame> = fc
  .record({ streamId, window: count, received: count })
  .map(({ streamId: id, ...body }) => ({ type: FrameType.ACCEPT, streamId: id, body }));

const resumeFrame: fc.Arbitrary<ControlFrame> = fc
  .record({ streamId, clientId: text, window: count, received: count, attempt: count })
  .map(({ streamId: id, ...body }) => ({ type: FrameType.RESUME, streamId: id, body }));

const closeFrame: fc.Arbitrary<ControlFrame> = fc
  .record({ streamId, reason: text, abrupt: fc.boolean() })
  .map(({ streamId: id, ...body }) => ({ type: FrameType.CLOSE, streamId: id, body }));

const pingFrame: fc.Arbitrary<ControlFrame> = fc
  .record({ type: fc.constantFrom(FrameType.PING, FrameType.PONG), sentAt: count })
  .map(({ type, sentAt }) => ({ type, streamId: 0, body: { sentAt } }) as ControlFrame);

const goodbyeFrame: fc.Arbitrary<ControlFrame> = fc
  .record({
    code: fc.oneof(fc.constantFrom('shutdown', 'identity-in-use', 'unsupported-version', 'revoked', 'certificate-refused'), text),
    reason: text,
    problem: fc.option(fc.oneof(fc.constantFrom('unknown-ca', 'expired', 'not-yet-valid', 'no-certificate', 'no-common-name', 'invalid'), text), { nil: undefined }),
  })
  .map(({ problem, ...body }) => ({ type: FrameType.GOODBYE, streamId: 0, body: problem === undefined ? body : { ...body, problem } }));

const controlFrame = fc.oneof(helloFrame, openFrame, acceptFrame, resumeFrame, closeFrame, pingFrame, goodbyeFrame);
const anyFrame = fc.oneof(dataFrame, ackFrame, controlFrame);
const cutPoints = fc.array(fc.nat(), { maxLength: 30 });

/** Required body fields of each control frame type, with a value of the wrong type for each. */
const REQUIRED_FIELDS: Record<number, Record<string, 'string' | 'number' | 'boolean'>> = {
  [FrameType.HELLO]: { version: 'number', role: 'string', id: 'string', heartbeatMs: 'number', streamWindow: 'number', maxFramePayload: 'number', instance: 'string' },
  [FrameType.OPEN]: { clientId: 'string', window: 'number', keepalive: 'number', protocolVersion: 'number', cleanSession: 'boolean' },
  [FrameType.ACCEPT]: { window: 'number', received: 'number' },
  [FrameType.RESUME]: { clientId: 'string', window: 'number', received: 'number', attempt: 'number' },
  [FrameType.CLOSE]: { reason: 'string', abrupt: 'boolean' },
  [FrameType.PING]: { sentAt: 'number' },
  [FrameType.PONG]: { sentAt: 'number' },
  [FrameType.GOODBYE]: { code: 'string', reason: 'string' },
};
const WRONG_VALUES: Record<'string' | 'number' | 'boolean', unknown[]> = {
  string: [1, true, null, ['a'], { a: 1 }, Buffer.from('id')],
  number: ['1', false, null, [1], { n: 1 }, new Date(0)],
  boolean: [0, 1, 'true', null, []],
};
const VALID_BODIES: Record<number, Record<string, unknown>> = {
  [FrameType.HELLO]: { version: PROTOCOL_VERSION, role: 'agent', id: 'site-7', heartbeatMs: 5000, streamWindow: 65536, maxFramePayload: 1048576, instance: 'f3a9c2' },
  [FrameType.OPEN]: { clientId: 'dev-1', window: 65536, keepalive: 60, protocolVersion: 4, cleanSession: true },
  [FrameType.ACCEPT]: { window: 65536, received: 0 },
  [FrameType.RESUME]: { clientId: 'dev-1', window: 65536, received: 12, attempt: 1 },
  [FrameType.CLOSE]: { reason: 'bye', abrupt: false },
  [FrameType.PING]: { sentAt: 1_700_000_000_000 },
  [FrameType.PONG]: { sentAt: 1_700_000_000_000 },
  [FrameType.GOODBYE]: { code: 'certificate-refused', reason: 'certificate expired', problem: 'expired' },
};

// ---- tests ---------------------------------------------------------------

describe('frame codec: round trips', () => {
  it('decodeFrames(encodeFrame(frame)) returns the frame, for every frame type', () => {
    fc.assert(
      fc.property(anyFrame, (frame) => {
        expect(decodeFrames(encodeFrame(frame), MAX_PAYLOAD)).toEqual([frame]);
      }),
      { numRuns: 500 },
    );
  });

  it('the streaming decoder returns the same frames in order however the bytes are chunked', () => {
    fc.assert(
      fc.property(fc.array(anyFrame, { minLength: 1, maxLength: 25 }), cutPoints, (frames, cuts) => {
        const bytes = Buffer.concat(frames.map(encodeFrame));
        expect(decodeChunks(splitAt(bytes, cuts))).toEqual(frames);
      }),
      { numRuns: 200 },
    );
  });

  it('decodes a stream fed one byte at a time', () => {
    fc.assert(
      fc.property(fc.array(anyFrame, { minLength: 1, maxLength: 4 }), (frames) => {
        const bytes = Buffer.concat(frames.map(encodeFrame));
        const singles = Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1));
        expect(decodeChunks(singles)).toEqual(frames);
      }),
      { numRuns: 20 },
    );
  });

  it('lays out the header as type u8, stream id u32 BE, payload length u32 BE', () => {
    const frame = encodeFrame({ type: FrameType.DATA, streamId: 0x01020304, payload: Buffer.from([0xc0, 0x00]) });
    expect(frame.toString('hex')).toBe('00' + '01020304' + '00000002' + 'c000');
  });

  it('encodes ACK offsets as a u64 BE and decodes them exactly up to 2^53 - 1', () => {
    for (const consumed of [0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 53 - 1]) {
      const bytes = encodeFrame({ type: FrameType.ACK, streamId: 5, consumed });
      expect(bytes.length).toBe(FRAME_HEADER_SIZE + ACK_PAYLOAD_SIZE);
      expect(bytes.readBigUInt64BE(FRAME_HEADER_SIZE)).toBe(BigInt(consumed));
      expect(decodeFrames(bytes, MAX_PAYLOAD)).toEqual([{ type: FrameType.ACK, streamId: 5, consumed }]);
    }
  });

  it('hands DATA payloads inside one chunk out as views of it; a straddling one is assembled', () => {
    const a = Buffer.from('first packet');
    const b = Buffer.from('second');
    const c = Buffer.from('third, split across chunks');
    const bytes = Buffer.concat([
      encodeFrame({ type: FrameType.DATA, streamId: 1, payload: a }),
      encodeFrame({ type: FrameType.DATA, streamId: 3, payload: b }),
      encodeFrame({ type: FrameType.DATA, streamId: 5, payload: c }),
    ]);
    // Buffer.alloc, not Buffer.from: small Buffer.from copies share one pool, which would blur the checks below.
    const firstChunk = Buffer.alloc(bytes.length - 5);
    bytes.copy(firstChunk, 0, 0, bytes.length - 5);
    const secondChunk = Buffer.alloc(5);
    bytes.copy(secondChunk, 0, bytes.length - 5);
    const seen: Array<{ streamId: number; payload: Buffer }> = [];
    const decoder = new FrameDecoder(MAX_PAYLOAD);
    const handler: FrameHandler = {
      data: (streamId, payload) => seen.push({ streamId, payload }),
      ack: () => expect.fail('no ACK expected'),
      control: () => expect.fail('no control frame expected'),
    };
    decoder.push(firstChunk, handler);
    expect(seen.length).toBe(2);
    expect(decoder.pendingBytes).toBe(FRAME_HEADER_SIZE + c.length - 5);
    decoder.push(secondChunk, handler);
    expect(seen.map((s) => s.streamId)).toEqual([1, 3, 5]);
    expect(seen.map((s) => s.payload.toString())).toEqual([a.toString(), b.toString(), c.toString()]);
    expect(seen[0].payload.buffer).toBe(firstChunk.buffer);
    expect(seen[0].payload.byteOffset).toBe(firstChunk.byteOffset + FRAME_HEADER_SIZE);
    expect(seen[1].payload.buffer).toBe(firstChunk.buffer);
    expect(seen[1].payload.byteOffset).toBe(firstChunk.byteOffset + 2 * FRAME_HEADER_SIZE + a.length);
    expect(seen[2].payload.buffer).not.toBe(firstChunk.buffer);
    expect(seen[2].payload.buffer).not.toBe(secondChunk.buffer);
  });

  it('accepts a payload of exactly the maximum size', () => {
    const payload = Buffer.alloc(1000, 1);
    const frames = decodeFrames(encodeFrame({ type: FrameType.DATA, streamId: 1, payload }), 1000);
    expect(frames).toEqual([{ type: FrameType.DATA, streamId: 1, payload }]);
  });

  it('decodes integers above 2^32 that msgpackr encodes as float 64 (a millisecond timestamp)', () => {
    const bytes = encodeFrame({ type: FrameType.PING, streamId: 0, body: { sentAt: 1_700_000_000_000 } });
    // map16 with one entry, "sentAt", float 64: what this implementation puts on the wire.
    expect(bytes.subarray(FRAME_HEADER_SIZE).toString('hex')).toBe('de0001a673656e744174cb4278bcfe56800000');
  });

  // Other msgpack implementations (Go, Rust, Python, C) encode integers >= 2^32 as uint 64 (0xcf).
  it('accepts a PING whose sentAt is encoded as msgpack uint 64', () => {
    const body = Buffer.from('81a673656e744174cf0000018bcfe56800', 'hex'); // {sentAt: 1700000000000} as uint 64
    expect(decodeFrames(rawFrame(FrameType.PING, 0, body), MAX_PAYLOAD)).toEqual([
      { type: FrameType.PING, streamId: 0, body: { sentAt: 1_700_000_000_000 } },
    ]);
  });
});

describe('frame codec: hostile input', () => {
  it('rejects a frame over the maximum payload as soon as its header arrives', () => {
    const header = Buffer.alloc(FRAME_HEADER_SIZE);
    writeFrameHeader(header, 0, FrameType.DATA, 1, 1001);
    expect(errorCodeOf(() => new FrameDecoder(1000).push(header, { data() {}, ack() {}, control() {} }))).toBe('E_FRAME_TOO_LARGE');
    expect(errorCodeOf(() => decodeFrames(rawFrame(FrameType.HELLO, 0, Buffer.alloc(1001)), 1000))).toBe('E_FRAME_TOO_LARGE');
    writeFrameHeader(header, 0, FrameType.DATA, 1, 0xffff_ffff);
    expect(errorCodeOf(() => decodeFrames(header, MAX_PAYLOAD))).toBe('E_FRAME_TOO_LARGE');
  });

  it('rejects oversized frames whatever their type, also after a partial header', () => {
    fc.assert(
      fc.property(fc.nat({ max: 255 }), fc.integer({ min: 1001, max: 0xffff_ffff }), fc.integer({ min: 1, max: 8 }), (type, length, cut) => {
        const header = Buffer.alloc(FRAME_HEADER_SIZE);
        writeFrameHeader(header, 0, type, 0, length);
        const decoder = new FrameDecoder(1000);
        const handler: FrameHandler = { data() {}, ack() {}, control() {} };
        decoder.push(header.subarray(0, cut), handler);
        expect(errorCodeOf(() => decoder.push(header.subarray(cut), handler))).toBe('E_FRAME_TOO_LARGE');
      }),
      { numRuns: 100 },
    );
  });

  it('encodes GOODBYE as in docs/protocol.md 14.3', () => {
    const bytes = encodeFrame({ type: FrameType.GOODBYE, streamId: 0, body: { code: 'shutdown', reason: 'agent shutting down' } });
    expect(bytes.toString('hex')).toBe(
      '09' + '00000000' + '0000002c' + 'de0002' + 'a4636f6465' + 'a873687574646f776e' + 'a6726561736f6e' + 'b36167656e74207368757474696e6720646f776e',
    );
  });

  it('encodes the revocation and certificate refusal GOODBYEs as in docs/protocol.md 14.3', () => {
    const revoked = encodeFrame({ type: FrameType.GOODBYE, streamId: 0, body: { code: 'revoked', reason: 'box stolen' } });
    expect(revoked.toString('hex')).toBe('09' + '00000000' + '00000022' + 'de0002' + 'a4636f6465' + 'a77265766f6b6564' + 'a6726561736f6e' + 'aa626f782073746f6c656e');
    const refused = encodeFrame({
      type: FrameType.GOODBYE,
      streamId: 0,
      body: { code: 'certificate-refused', reason: 'no certificate presented', problem: 'no-certificate' },
    });
    expect(refused.toString('hex')).toBe(
      '09' + '00000000' + '00000053' + 'de0003' +
        'a4636f6465' + 'b363657274696669636174652d72656675736564' +
        'a6726561736f6e' + 'b86e6f2063657274696669636174652070726573656e746564' +
        'a770726f626c656d' + 'ae6e6f2d6365727469666963617465',
    );
  });

  it('rejects a HELLO whose capabilities are not an array of strings', () => {
    const hello = VALID_BODIES[FrameType.HELLO];
    for (const capabilities of ['goodbye', ['goodbye', 7], { goodbye: true }, null]) {
      expect(errorCodeOf(() => decodeFrames(controlFrameWithBody(FrameType.HELLO, { ...hello, capabilities }), MAX_PAYLOAD))).toBe('E_FRAME_MALFORMED');
    }
    expect(decodeFrames(controlFrameWithBody(FrameType.HELLO, { ...hello, capabilities: [] }), MAX_PAYLOAD)).toHaveLength(1);
  });

  it('rejects unknown frame types', () => {
    fc.assert(
      fc.property(fc.integer({ min: FrameType.GOODBYE + 1, max: 255 }), streamId, fc.uint8Array({ maxLength: 20 }), (type, id, payload) => {
        expect(errorCodeOf(() => decodeFrames(rawFrame(type, id, Buffer.from(payload)), MAX_PAYLOAD))).toBe('E_FRAME_BAD_TYPE');
      }),
      { numRuns: 100 },
    );
  });

  it('rejects an ACK whose payload is not 8 bytes', () => {
    for (const length of [0, 1, 7, 9, 16]) {
      expect(errorCodeOf(() => decodeFrames(rawFrame(FrameType.ACK, 1, Buffer.alloc(length)), MAX_PAYLOAD))).toBe('E_FRAME_MALFORMED');
    }
  });

  it('accepts each valid control body used by the malformed-field cases', () => {
    for (const [type, body] of Object.entries(VALID_BODIES)) {
      expect(decodeFrames(controlFrameWithBody(Number(type), body), MAX_PAYLOAD)).toEqual([
        { type: Number(type), streamId: 0, body },
      ]);
    }
  });

  it('decodes GOODBYE of every code as sent: shutdown, identity, version and certificate refusals and a code from a newer peer', () => {
    const bodies = [
      { code: 'shutdown', reason: 'hub shutting down' },
      { code: 'identity-in-use', reason: 'agent-1 worker 0 is connected from another process' },
      { code: 'unsupported-version', reason: 'hub speaks version 1 only' },
      { code: 'revoked', reason: 'certificate of agent agent-1 revoked' },
      { code: 'certificate-refused', reason: 'no certificate presented', problem: 'no-certificate' },
      { code: 'certificate-refused', reason: 'certificate expired (CERT_HAS_EXPIRED)', problem: 'expired' },
      { code: 'maintenance', reason: 'a code this side does not know' },
    ];
    for (const body of bodies) {
      expect(decodeFrames(encodeFrame({ type: FrameType.GOODBYE, streamId: 0, body }), MAX_PAYLOAD)).toEqual([{ type: FrameType.GOODBYE, streamId: 0, body }]);
    }
    // Keys a newer peer adds are carried, not refused (3.5).
    const extended = { code: 'revoked', reason: 'r', revokedAt: 1_700_000_000_000 };
    expect(decodeFrames(controlFrameWithBody(FrameType.GOODBYE, extended), MAX_PAYLOAD)).toEqual([{ type: FrameType.GOODBYE, streamId: 0, body: extended }]);
  });

  it('rejects a GOODBYE whose optional problem is not a string', () => {
    for (const wrong of WRONG_VALUES.string) {
      const body = { ...VALID_BODIES[FrameType.GOODBYE], problem: wrong };
      expect(errorCodeOf(() => decodeFrames(controlFrameWithBody(FrameType.GOODBYE, body), MAX_PAYLOAD))).toBe('E_FRAME_MALFORMED');
    }
  });

  it('rejects a control frame with a required field missing', () => {
    for (const [type, fields] of Object.entries(REQUIRED_FIELDS)) {
      for (const name of Object.keys(fields)) {
        const { [name]: _dropped, ...body } = VALID_BODIES[Number(type)];
        expect(errorCodeOf(() => decodeFrames(controlFrameWithBody(Number(type), body), MAX_PAYLOAD)), `type ${type} without ${name}`).toBe(
          'E_FRAME_MALFORMED',
        );
      }
    }
  });

  it('rejects a control frame with a field of the wrong type', () => {
    for (const [type, fields] of Object.entries(REQUIRED_FIELDS)) {
      for (const [name, kind] of Object.entries(fields)) {
        for (const wrong of WRONG_VALUES[kind]) {
          const body = { ...VALID_BODIES[Number(type)], [name]: wrong };
          expect(
            errorCodeOf(() => decodeFrames(controlFrameWithBody(Number(type), body), MAX_PAYLOAD)),
            `type ${type} with ${name} = ${JSON.stringify(wrong)}`,
          ).toBe('E_FRAME_MALFORMED');
        }
      }
    }
  });

  it('rejects a control frame whose body is not msgpack, or not a map', () => {
    const notMsgpack = ['', 'de0001a1', '8081', 'c7017200', 'd47200', 'dd000000ff'];
    const notAMap = ['90', '01', 'c0', 'c3', 'a3616263', '9101', 'c1'];
    for (const type of Object.keys(REQUIRED_FIELDS).map(Number)) {
      for (const hex of [...notMsgpack, ...notAMap]) {
        expect(errorCodeOf(() => decodeFrames(rawFrame(type, 0, Buffer.from(hex, 'hex')), MAX_PAYLOAD)), `type ${type}, body ${hex}`).toBe(
          'E_FRAME_MALFORMED',
        );
      }
    }
  });

  it('reports truncated input to decodeFrames as malformed', () => {
    fc.assert(
      fc.property(fc.array(anyFrame, { minLength: 1, maxLength: 5 }), fc.nat(), (frames, cut) => {
        const bytes = Buffer.concat(frames.map(encodeFrame));
        const last = encodeFrame(frames[frames.length - 1]);
        // Remove 1..(all but one) bytes of the last frame.
        const removed = 1 + (cut % (last.length - 1));
        expect(errorCodeOf(() => decodeFrames(bytes.subarray(0, bytes.length - removed), MAX_PAYLOAD))).toBe('E_FRAME_MALFORMED');
      }),
      { numRuns: 200 },
    );
  });

  it('only ever throws an EdgemuxError on random bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.integer({ min: 0, max: 400 }), (bytes, maxPayload) => {
        const code = errorCodeOf(() => decodeFrames(Buffer.from(bytes), maxPayload));
        expect(code).not.toBe('not an EdgemuxError');
      }),
      { numRuns: 500 },
    );
  });

  it('only ever throws an EdgemuxError on random control bodies and random chunking', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ type: fc.nat({ max: 10 }), streamId, body: fc.uint8Array({ maxLength: 60 }) }), { minLength: 1, maxLength: 6 }),
        cutPoints,
        (frames, cuts) => {
          const bytes = Buffer.concat(frames.map((f) => rawFrame(f.type, f.streamId, Buffer.from(f.body))));
          const code = errorCodeOf(() => decodeChunks(splitAt(bytes, cuts)));
          expect(code).not.toBe('not an EdgemuxError');
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('frame codec: numeric fields', () => {
  it('refuses windows, offsets and intervals that are negative, fractional or not finite', () => {
    const bad = [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53];
    for (const value of bad) {
      for (const [type, field] of [
        [FrameType.OPEN, 'window'],
        [FrameType.ACCEPT, 'received'],
        [FrameType.RESUME, 'window'],
        [FrameType.HELLO, 'maxFramePayload'],
      ] as const) {
        const body = { ...VALID_BODIES[type], [field]: value };
        expect(errorCodeOf(() => decodeFrames(controlFrameWithBody(type, body), MAX_PAYLOAD))).toBe('E_FRAME_MALFORMED');
      }
    }
  });

  it('refuses a HELLO whose role is neither agent nor hub', () => {
    const body = { ...VALID_BODIES[FrameType.HELLO], role: 'broker' };
    expect(errorCodeOf(() => decodeFrames(controlFrameWithBody(FrameType.HELLO, body), MAX_PAYLOAD))).toBe('E_FRAME_MALFORMED');
  });
});
