import fc from 'fast-check';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { type EdgemuxErrorCode, isEdgemuxError } from '../../shared/errors.js';
import { MAX_REMAINING_LENGTH, MqttFramer, PacketSizeGauge, PINGREQ_BYTES, PINGRESP_BYTES, wholePacketSize } from '../../shared/mqtt-framing.js';

const MAX_PACKET = 1024 * 1024;

/** MQTT 3.1.1 §2.2.3, written out independently of the code under test. */
function encodeRemainingLength(length: number): Buffer {
  const bytes: number[] = [];
  let value = length;
  do {
    let byte = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) byte |= 0x80;
    bytes.push(byte);
  } while (value > 0);
  return Buffer.from(bytes);
}

function rawPacket(firstByte: number, body: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([firstByte]), encodeRemainingLength(body.length), body]);
}

/** Splits `bytes` at the given cut points (any order, duplicates allowed: they make empty chunks). */
function splitAt(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = [...cuts].map((cut) => cut % (bytes.length + 1)).sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let start = 0;
  for (const point of points) {
    chunks.push(bytes.subarray(start, point));
    start = point;
  }
  chunks.push(bytes.subarray(start));
  return chunks;
}

/** Runs chunks through a framer; packets are copied so later chunks cannot alias them. */
function frame(chunks: Buffer[], maxPacketSize = MAX_PACKET): { packets: Buffer[]; framer: MqttFramer } {
  const framer = new MqttFramer(maxPacketSize);
  const packets: Buffer[] = [];
  for (const chunk of chunks) framer.push(chunk, (packet) => packets.push(Buffer.from(packet)));
  return { packets, framer };
}

/** Buffer.equals per packet: far faster than a deep toEqual on large buffers. */
function expectSamePackets(actual: Buffer[], expected: Buffer[]): void {
  expect(actual.length).toBe(expected.length);
  actual.forEach((packet, i) => {
    if (!packet.equals(expected[i])) expect.fail(`packet ${i} differs: ${packet.toString('hex', 0, 32)} vs ${expected[i].toString('hex', 0, 32)}`);
  });
}

function errorCodeOf(fn: () => unknown): EdgemuxErrorCode | 'no error' | 'not an EdgemuxError' {
  try {
    fn();
  } catch (err) {
    return isEdgemuxError(err) ? err.code : 'not an EdgemuxError';
  }
  return 'no error';
}

// ---- arbitraries ---------------------------------------------------------

const qos = fc.constantFrom(0 as const, 1 as const, 2 as const);
const messageId = fc.integer({ min: 1, max: 0xffff });
const topic = fc.string({ minLength: 1, maxLength: 40 }).filter((t) => !t.includes('+') && !t.includes('#'));
const payload = fc.oneof(
  fc.uint8Array({ maxLength: 64 }),
  fc.uint8Array({ minLength: 100, maxLength: 3_000 }),
).map((bytes) => Buffer.from(bytes));

const publishPacket: fc.Arbitrary<Packet> = fc
  .record({ topic, payload, qos, messageId, retain: fc.boolean(), dup: fc.boolean() })
  .map(({ topic: t, payload: p, qos: q, messageId: id, retain, dup }) =>
    q === 0
      ? { cmd: 'publish', topic: t, payload: p, qos: 0, retain, dup: false }
      : { cmd: 'publish', topic: t, payload: p, qos: q, messageId: id, retain, dup },
  );

const subscribePacket: fc.Arbitrary<Packet> = fc
  .record({ messageId, subscriptions: fc.array(fc.record({ topic, qos }), { minLength: 1, maxLength: 5 }) })
  .map(({ messageId: id, subscriptions }) => ({ cmd: 'subscribe', messageId: id, subscriptions }));

const unsubscribePacket: fc.Arbitrary<Packet> = fc
  .record({ messageId, unsubscriptions: fc.array(topic, { minLength: 1, maxLength: 5 }) })
  .map(({ messageId: id, unsubscriptions }) => ({ cmd: 'unsubscribe', messageId: id, unsubscriptions }));

const ackPacket: fc.Arbitrary<Packet> = fc
  .record({ cmd: fc.constantFrom('puback' as const, 'pubrec' as const, 'pubrel' as const, 'pubcomp' as const), messageId })
  .map((packet) => packet as Packet);

const connectPacket: fc.Arbitrary<Packet> = fc
  .record({
    clientId: fc.string({ minLength: 1, maxLength: 23 }),
    keepalive: fc.integer({ min: 0, max: 0xffff }),
    clean: fc.boolean(),
  })
  .map(({ clientId, keepalive, clean }) => ({ cmd: 'connect', protocolVersion: 4, clientId, keepalive, clean }));

const smallPacket: fc.Arbitrary<Packet> = fc.constantFrom<Packet>(
  { cmd: 'pingreq' },
  { cmd: 'pingresp' },
  { cmd: 'disconnect' },
  { cmd: 'connack', returnCode: 0, sessionPresent: false },
  { cmd: 'suback', messageId: 7, granted: [0, 1, 2, 128] },
  { cmd: 'unsuback', messageId: 9, granted: [] },
);

/** Packets as a real MQTT implementation writes them. */
const generatedPacket: fc.Arbitrary<Buffer> = fc
  .oneof(publishPacket, subscribePacket, unsubscribePacket, ackPacket, connectPacket, smallPacket)
  .map((packet) => mqttPacket.generate(packet));

/** Any fixed header the framer must accept: type 1..15, any flags, any body. */
const rawValidPacket: fc.Arbitrary<Buffer> = fc
  .record({
    type: fc.integer({ min: 1, max: 15 }),
    flags: fc.integer({ min: 0, max: 15 }),
    body: fc.oneof(
      { weight: 8, arbitrary: fc.uint8Array({ maxLength: 130 }) },
      // Around the two-to-three-byte remaining length boundary (16 383 / 16 384).
      { weight: 1, arbitrary: fc.integer({ min: 16_380, max: 16_388 }).map((n) => new Uint8Array(n).fill(n & 0xff)) },
    ),
  })
  .map(({ type, flags, body }) => rawPacket((type << 4) | flags, body));

const packetStream = fc.array(fc.oneof(generatedPacket, rawValidPacket), { minLength: 1, maxLength: 30 });
const cutPoints = fc.array(fc.nat(), { maxLength: 40 });

// ---- tests ---------------------------------------------------------------

describe('MqttFramer: splitting a byte stream into packets', () => {
  it('returns every packet byte-identical and in order, however the stream is chunked', () => {
    fc.assert(
      fc.property(packetStream, cutPoints, (packets, cuts) => {
        const stream = Buffer.concat(packets);
        const { packets: out, framer } = frame(splitAt(stream, cuts));
        expectSamePackets(out, packets);
        expect(framer.buffered).toBe(0);
      }),
    );
  });

  it('handles a stream fed one byte at a time', () => {
    fc.assert(
      fc.property(fc.array(generatedPacket, { minLength: 1, maxLength: 5 }), (packets) => {
        const stream = Buffer.concat(packets);
        const bytes = Array.from({ length: stream.length }, (_, i) => stream.subarray(i, i + 1));
        expectSamePackets(frame(bytes).packets, packets);
      }),
      { numRuns: 30 },
    );
  });

  it('hands packets inside one chunk out as views of that chunk, without copying', () => {
    const chunk = Buffer.concat([PINGREQ_BYTES, rawPacket(0x30, Buffer.from('abc')), PINGRESP_BYTES]);
    const views: Buffer[] = [];
    new MqttFramer(MAX_PACKET).push(chunk, (packet) => views.push(packet));
    expect(views.map((view) => view.byteOffset - chunk.byteOffset)).toEqual([0, 2, 7]);
    for (const view of views) expect(view.buffer).toBe(chunk.buffer);
  });

  it('holds back a partial packet and reports it as buffered', () => {
    const packet = rawPacket(0x30, Buffer.alloc(300, 7));
    const framer = new MqttFramer(MAX_PACKET);
    const out: Buffer[] = [];
    framer.push(packet.subarray(0, 2), (p) => out.push(p));
    expect(framer.buffered).toBe(2);
    framer.push(packet.subarray(2, 100), (p) => out.push(p));
    expect(framer.buffered).toBe(100);
    framer.push(packet.subarray(100), (p) => out.push(p));
    expect(framer.buffered).toBe(0);
    expect(out).toEqual([packet]);
  });
});

describe('remaining length boundaries (MQTT 3.1.1 §2.2.3)', () => {
  const cases: Array<[remaining: number, lengthBytes: number]> = [
    [0, 1],
    [127, 1],
    [128, 2],
    [16_383, 2],
    [16_384, 3],
    [2_097_151, 3],
    [2_097_152, 4],
    [268_435_455, 4],
  ];

  it.each(cases)('remaining length %i takes %i byte(s) and sizes the packet', (remaining, lengthBytes) => {
    const header = Buffer.concat([Buffer.from([0x30]), encodeRemainingLength(remaining)]);
    expect(header.length).toBe(1 + lengthBytes);
    expect(wholePacketSize(header, 0, Number.MAX_SAFE_INTEGER)).toBe(1 + lengthBytes + remaining);
    // One byte short of the header is not enough to know the size.
    expect(wholePacketSize(header.subarray(0, header.length - 1), 0, Number.MAX_SAFE_INTEGER)).toBe(-1);
  });

  it('MAX_REMAINING_LENGTH is the largest four-byte value', () => {
    expect(MAX_REMAINING_LENGTH).toBe(268_435_455);
    expect(encodeRemainingLength(MAX_REMAINING_LENGTH)).toEqual(Buffer.from([0xff, 0xff, 0xff, 0x7f]));
  });

  it.each(cases.filter(([remaining]) => remaining <= 2_097_152))(
    'a packet with remaining length %i comes through the framer intact, split inside its header',
    (remaining, lengthBytes) => {
      const packet = rawPacket(0x32, Buffer.alloc(remaining, 0xa5));
      const before = PINGREQ_BYTES;
      const stream = Buffer.concat([before, packet, PINGRESP_BYTES]);
      // Cut after every header byte and once in the body.
      const cuts = Array.from({ length: lengthBytes + 1 }, (_, i) => before.length + 1 + i);
      cuts.push(before.length + 1 + lengthBytes + Math.floor(remaining / 2));
      const { packets } = frame(splitAt(stream, cuts), 4 * 1024 * 1024);
      expect(packets.length).toBe(3);
      expect(packets[1].equals(packet)).toBe(true);
    },
  );
});

describe('MqttFramer: hostile input', () => {
  it('rejects a remaining length with a fifth length byte', () => {
    const fiveBytes = Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    expect(errorCodeOf(() => frame([fiveBytes]))).toBe('E_MQTT_BAD_REMAINING_LENGTH');
    // Known as soon as the fourth length byte carries a continuation bit.
    expect(errorCodeOf(() => frame([fiveBytes.subarray(0, 5)]))).toBe('E_MQTT_BAD_REMAINING_LENGTH');
    // Also when the header trickles in byte by byte, and after good packets.
    const trickle = Buffer.concat([PINGREQ_BYTES, Buffer.from([0x82, 0x80, 0x80, 0x80, 0x80, 0x01])]);
    const bytes = Array.from({ length: trickle.length }, (_, i) => trickle.subarray(i, i + 1));
    const seen: Buffer[] = [];
    const framer = new MqttFramer(MAX_PACKET);
    expect(
      errorCodeOf(() => {
        for (const b of bytes) framer.push(b, (p) => seen.push(Buffer.from(p)));
      }),
    ).toBe('E_MQTT_BAD_REMAINING_LENGTH');
    expect(seen).toEqual([PINGREQ_BYTES]);
  });

  it('rejects packet type 0 whatever its flags and wherever it appears', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 15 }), fc.array(generatedPacket, { maxLength: 3 }), cutPoints, (flags, before, cuts) => {
        const stream = Buffer.concat([...before, Buffer.from([flags, 0x00])]);
        expect(errorCodeOf(() => frame(splitAt(stream, cuts)))).toBe('E_MQTT_BAD_PACKET_TYPE');
      }),
      { numRuns: 50 },
    );
  });

  it('rejects a packet over maxPacketSize as soon as its header is complete, before the body', () => {
    const max = 1000;
    // remaining 997 + 1 type byte + 2 length bytes = 1000 bytes: exactly at the limit is fine.
    expect(frame([rawPacket(0x30, Buffer.alloc(997))], max).packets.length).toBe(1);
    const tooBig = rawPacket(0x30, Buffer.alloc(998));
    expect(tooBig.length).toBe(max + 1);
    const framer = new MqttFramer(max);
    const noop = (): void => {};
    framer.push(tooBig.subarray(0, 1), noop);
    framer.push(tooBig.subarray(1, 2), noop); // continuation byte: size still unknown
    expect(errorCodeOf(() => framer.push(tooBig.subarray(2, 3), noop))).toBe('E_MQTT_PACKET_TOO_LARGE');
    // A header announcing the largest expressible packet is refused without waiting for 256 MiB.
    const huge = Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f]);
    expect(errorCodeOf(() => new MqttFramer(MAX_PACKET).push(huge, noop))).toBe('E_MQTT_PACKET_TOO_LARGE');
  });

  it('rejects oversized packets among good ones, after handing out the good ones', () => {
    fc.assert(
      fc.property(fc.array(rawValidPacket, { maxLength: 5 }), fc.integer({ min: 1, max: 500 }), cutPoints, (good, excess, cuts) => {
        const max = 20_000;
        // Only the header of the oversized packet is sent: the framer must not need more.
        const bad = rawPacket(0x30, Buffer.alloc(max + excess)).subarray(0, 5);
        const out: Buffer[] = [];
        const framer = new MqttFramer(max);
        const code = errorCodeOf(() => {
          for (const chunk of splitAt(Buffer.concat([...good, bad]), cuts)) framer.push(chunk, (p) => out.push(Buffer.from(p)));
        });
        expect(code).toBe('E_MQTT_PACKET_TOO_LARGE');
        expectSamePackets(out, good);
      }),
      { numRuns: 50 },
    );
  });

  it('on random bytes only ever throws an EdgemuxError, and what it returns is a prefix of the input', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), cutPoints, fc.integer({ min: 2, max: 700 }), (bytes, cuts, max) => {
        const input = Buffer.from(bytes);
        const framer = new MqttFramer(max);
        const out: Buffer[] = [];
        try {
          for (const chunk of splitAt(input, cuts)) framer.push(chunk, (p) => out.push(Buffer.from(p)));
        } catch (err) {
          expect(isEdgemuxError(err)).toBe(true);
        }
        const emitted = Buffer.concat(out);
        expect(emitted.equals(input.subarray(0, emitted.length))).toBe(true);
        for (const packet of out) expect(packet.length).toBeLessThanOrEqual(max);
      }),
      { numRuns: 300 },
    );
  });
});

describe('PacketSizeGauge: packet sizes checked at the header in a stream it does not hold', () => {
  function gauge(chunks: Buffer[], max: number): EdgemuxErrorCode | 'no error' | 'not an EdgemuxError' {
    const meter = new PacketSizeGauge(max);
    return errorCodeOf(() => {
      for (const chunk of chunks) meter.check(chunk);
    });
  }

  it('agrees with the framer on every stream and every chunking: accepted, too large, or a bad length', () => {
    fc.assert(
      fc.property(packetStream, cutPoints, fc.integer({ min: 2, max: 20_000 }), (packets, cuts, max) => {
        const stream = Buffer.concat(packets);
        const framed = errorCodeOf(() => frame(splitAt(stream, cuts), max));
        expect(gauge(splitAt(stream, cuts), max)).toBe(framed);
      }),
      { numRuns: 300 },
    );
  });

  it('refuses a 250 MiB header on its last length byte, before any body, even split byte by byte', () => {
    const header = Buffer.concat([Buffer.from([0x30]), encodeRemainingLength(250 * 1024 * 1024)]);
    const meter = new PacketSizeGauge(MAX_PACKET);
    for (let i = 0; i < header.length - 1; i++) meter.check(header.subarray(i, i + 1));
    expect(errorCodeOf(() => meter.check(header.subarray(header.length - 1)))).toBe('E_MQTT_PACKET_TOO_LARGE');
  });

  it('passes a packet of exactly the limit and refuses one byte more, after good packets in the same chunk', () => {
    const max = 1000;
    const good = [rawPacket(0xc0, Buffer.alloc(0)), rawPacket(0x30, Buffer.alloc(997))];
    expect(gauge([Buffer.concat(good)], max)).toBe('no error');
    expect(gauge([Buffer.concat([...good, rawPacket(0x30, Buffer.alloc(998)).subarray(0, 3)])], max)).toBe('E_MQTT_PACKET_TOO_LARGE');
  });

  it('refuses a remaining length with a fifth length byte', () => {
    expect(gauge([Buffer.from([0x30, 0x80, 0x80, 0x80, 0x80, 0x01])], MAX_REMAINING_LENGTH + 5)).toBe('E_MQTT_BAD_REMAINING_LENGTH');
  });
});
