import { Writable } from 'node:stream';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeFrames, encodeControlFrame, encodeFrame, type Frame, FrameType, FRAME_HEADER_SIZE } from '../../shared/frame-codec.js';
import { FrameWriter } from '../../shared/frame-writer.js';

const MAX_PAYLOAD = 1024 * 1024;
const BATCH_BYTES = 64 * 1024;
const COPY_LIMIT = 16 * 1024;

/** A real Writable that keeps every chunk it is handed, as given (no copies). */
class RecordingWritable extends Writable {
  readonly chunks: Buffer[] = [];

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.chunks.push(chunk);
    callback();
  }
}

function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function decodeAll(chunks: Buffer[]): Frame[] {
  return decodeFrames(Buffer.concat(chunks), MAX_PAYLOAD);
}

/** Writes a frame the way the tunnel does: DATA and ACK in place, control frames pre-encoded. */
function writeFrame(writer: FrameWriter, frame: Frame): void {
  if (frame.type === FrameType.DATA) writer.data(frame.streamId, frame.payload);
  else if (frame.type === FrameType.ACK) writer.ack(frame.streamId, frame.consumed);
  else writer.raw(encodeControlFrame(frame));
}

function dataFrame(streamId: number, size: number, fill: number): Frame {
  return { type: FrameType.DATA, streamId, payload: Buffer.alloc(size, fill) };
}

describe('FrameWriter: gathering writes', () => {
  it('writes nothing until the turn ends, then all frames of the turn in one write', async () => {
    const socket = new RecordingWritable();
    const writer = new FrameWriter(socket);
    const frames: Frame[] = [];
    for (let i = 0; i < 200; i++) {
      frames.push(dataFrame(2 * i + 1, 64, i & 0xff));
      if (i % 10 === 0) frames.push({ type: FrameType.ACK, streamId: 2 * i + 1, consumed: 2 ** 40 + i });
    }
    frames.push({ type: FrameType.PING, streamId: 0, body: { sentAt: 1_700_000_000_000 } });
    for (const frame of frames) writeFrame(writer, frame);
    expect(socket.chunks.length).toBe(0);
    await nextTurn();
    expect(socket.chunks.length).toBe(1);
    expect(decodeAll(socket.chunks)).toEqual(frames);
  });

  it('starts a new write for frames of the next turn', async () => {
    const socket = new RecordingWritable();
    const writer = new FrameWriter(socket);
    writer.data(1, Buffer.from('first turn'));
    await nextTurn();
    writer.data(1, Buffer.from('second turn'));
    writer.ack(1, 10);
    await nextTurn();
    expect(socket.chunks.length).toBe(2);
    expect(decodeAll(socket.chunks.slice(0, 1))).toEqual([{ type: FrameType.DATA, streamId: 1, payload: Buffer.from('first turn') }]);
    expect(decodeAll(socket.chunks.slice(1))).toEqual([
      { type: FrameType.DATA, streamId: 1, payload: Buffer.from('second turn') },
      { type: FrameType.ACK, streamId: 1, consumed: 10 },
    ]);
  });

  it('never rewrites bytes it already handed to the socket', async () => {
    const socket = new RecordingWritable();
    const writer = new FrameWriter(socket);
    writer.data(1, Buffer.alloc(100, 0xaa));
    await nextTurn();
    const firstWrite = Buffer.from(socket.chunks[0]);
    // Fill the rest of the batch and beyond, over several turns.
    for (let turn = 0; turn < 5; turn++) {
      for (let i = 0; i < 50; i++) writer.data(3, Buffer.alloc(1000, turn));
      await nextTurn();
    }
    expect(socket.chunks[0].equals(firstWrite)).toBe(true);
    const frames = decodeAll(socket.chunks);
    expect(frames.length).toBe(1 + 250);
  });

  it('splits a turn of more than 64 KiB into writes of at most 64 KiB, in order', async () => {
    const socket = new RecordingWritable();
    const writer = new FrameWriter(socket);
    const frames = Array.from({ length: 300 }, (_, i) => dataFrame(1, 1000, i & 0xff));
    for (const frame of frames) writeFrame(writer, frame);
    await nextTurn();
    const framesPerBatch = Math.floor(BATCH_BYTES / (FRAME_HEADER_SIZE + 1000));
    expect(socket.chunks.length).toBe(Math.ceil(frames.length / framesPerBatch));
    for (const chunk of socket.chunks) expect(chunk.length).toBeLessThanOrEqual(BATCH_BYTES);
    expect(Buffer.concat(socket.chunks).equals(Buffer.concat(frames.map(encodeFrame)))).toBe(true);
  });

  it('returns the bytes of a copied payload as they will go out (a view of the batch)', async () => {
    const socket = new RecordingWritable();
    const writer = new FrameWriter(socket);
    const payload = Buffer.from('hello');
    const kept = writer.data(9, payload);
    expect(kept).not.toBe(payload);
    expect(kept.equals(payload)).toBe(true);
    await nextTurn();
    const written = socket.chunks[0];
    expect(kept.buffer).toBe(written.buffer);
    expect(kept.byteOffset).toBe(written.byteOffset + FRAME_HEADER_SIZE);
  });
});

describe('FrameWriter: large payloads', () => {
  it('writes a payload over 16 KiB as its own buffer, without copying, after what was queued before it', async () => {
    const socket = new RecordingWritable();
    const writer = new FrameWriter(socket);
    const before = dataFrame(1, 10, 1);
    const big = Buffer.alloc(COPY_LIMIT + 1, 0x42);
    const after = dataFrame(1, 10, 2);
    writeFrame(writer, before);
    const kept = writer.data(3, big);
    writeFrame(writer, after);
    expect(kept).toBe(big);
    // The queued frame and the large one went out at once, in order; the header is separate.
    expect(socket.chunks.length).toBe(3);
    expect(socket.chunks[1].length).toBe(FRAME_HEADER_SIZE);
    expect(socket.chunks[2]).toBe(big);
    await nextTurn();
    expect(socket.chunks.length).toBe(4);
    expect(decodeAll(socket.chunks)).toEqual([before, { type: FrameType.DATA, streamId: 3, payload: big }, after]);
  });

  it('copies a payload of exactly 16 KiB into the batch', async () => {
    const socket = new RecordingWritable();
    const writer = new FrameWriter(socket);
    const payload = Buffer.alloc(COPY_LIMIT, 7);
    writer.data(1, payload);
    expect(socket.chunks.length).toBe(0);
    await nextTurn();
    expect(socket.chunks.length).toBe(1);
    expect(socket.chunks[0]).not.toBe(payload);
    expect(decodeAll(socket.chunks)).toEqual([{ type: FrameType.DATA, streamId: 1, payload }]);
  });

  it('writes an encoded frame over 16 KiB directly, after what was queued before it', async () => {
    const socket = new RecordingWritable();
    const writer = new FrameWriter(socket);
    const close = encodeControlFrame({ type: FrameType.CLOSE, streamId: 5, body: { reason: 'x'.repeat(COPY_LIMIT + 100), abrupt: true } });
    writer.ack(5, 77);
    writer.raw(close);
    expect(socket.chunks.length).toBe(2);
    expect(socket.chunks[1]).toBe(close);
    await nextTurn();
    expect(decodeAll(socket.chunks).map((f) => f.type)).toEqual([FrameType.ACK, FrameType.CLOSE]);
  });
});

describe('FrameWriter: any mix of frames', () => {
  const frame: fc.Arbitrary<Frame> = fc.oneof(
    { weight: 6, arbitrary: fc.record({ streamId: fc.nat(), size: fc.nat({ max: 3000 }), fill: fc.nat({ max: 255 }) }).map((d) => dataFrame(d.streamId, d.size, d.fill)) },
    { weight: 1, arbitrary: fc.integer({ min: COPY_LIMIT - 2, max: 70_000 }).map((size) => dataFrame(1, size, size & 0xff)) },
    { weight: 2, arbitrary: fc.record({ streamId: fc.nat(), consumed: fc.maxSafeNat() }).map((a) => ({ type: FrameType.ACK, ...a }) as Frame) },
    { weight: 1, arbitrary: fc.record({ reason: fc.string({ maxLength: 30 }), abrupt: fc.boolean() }).map((body) => ({ type: FrameType.CLOSE, streamId: 3, body }) as Frame) },
  );

  it('delivers every frame intact and in order, across turns, with no write over 64 KiB except large payloads', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(frame, { maxLength: 40 }), { minLength: 1, maxLength: 4 }), async (turns) => {
        const socket = new RecordingWritable();
        const writer = new FrameWriter(socket);
        for (const turn of turns) {
          for (const f of turn) writeFrame(writer, f);
          await nextTurn();
        }
        const all = turns.flat();
        const decoded = decodeAll(socket.chunks);
        expect(decoded.length).toBe(all.length);
        decoded.forEach((got, i) => {
          const want = all[i];
          if (want.type === FrameType.DATA && got.type === FrameType.DATA) {
            expect(got.streamId).toBe(want.streamId);
            expect(got.payload.equals(want.payload)).toBe(true);
          } else {
            expect(got).toEqual(want);
          }
        });
        const bigPayloads = new Set(all.flatMap((f) => (f.type === FrameType.DATA && f.payload.length > COPY_LIMIT ? [f.payload] : [])));
        for (const chunk of socket.chunks) {
          if (!bigPayloads.has(chunk)) expect(chunk.length).toBeLessThanOrEqual(BATCH_BYTES);
        }
      }),
      { numRuns: 60 },
    );
  });
});
