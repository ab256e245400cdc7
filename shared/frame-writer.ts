import type { Writable } from 'node:stream';
import { ACK_PAYLOAD_SIZE, FRAME_HEADER_SIZE, FrameType, writeAckFrame, writeFrameHeader } from './frame-codec.js';

/** Size of the buffers frames are gathered into; one socket write carries up to this much. */
const BATCH_BYTES = 64 * 1024;
/** Payloads above this are written as their own buffer instead of being copied into a batch. */
const COPY_LIMIT = 16 * 1024;

/**
 * Gathers frames written during one turn of the event loop into a single
 * socket write. A 64-byte MQTT publish costs a 9-byte header and a copy,
 * instead of a syscall and a TLS record of its own (batching measured ~10x).
 */
export class FrameWriter {
  private batch = Buffer.allocUnsafe(BATCH_BYTES);
  private batchStart = 0;
  private position = 0;
  private flushScheduled = false;
  private readonly flushBound = (): void => this.flush();

  constructor(private readonly socket: Writable) {}

  /**
   * Queues a DATA frame. Returns the bytes of the payload as they will go
   * out: a view of the batch it was copied into (immutable once flushed) or,
   * for a large payload, the payload itself. Callers keep it for replay.
   */
  data(streamId: number, payload: Buffer): Buffer {
    if (payload.length > COPY_LIMIT) {
      const header = Buffer.allocUnsafe(FRAME_HEADER_SIZE);
      writeFrameHeader(header, 0, FrameType.DATA, streamId, payload.length);
      this.flush();
      this.socket.cork();
      this.socket.write(header);
      this.socket.write(payload);
      this.socket.uncork();
      return payload;
    }
    this.reserve(FRAME_HEADER_SIZE + payload.length);
    writeFrameHeader(this.batch, this.position, FrameType.DATA, streamId, payload.length);
    const start = this.position + FRAME_HEADER_SIZE;
    payload.copy(this.batch, start);
    this.position = start + payload.length;
    return this.batch.subarray(start, this.position);
  }

  ack(streamId: number, consumed: number): void {
    this.reserve(FRAME_HEADER_SIZE + ACK_PAYLOAD_SIZE);
    writeAckFrame(this.batch, this.position, streamId, consumed);
    this.position += FRAME_HEADER_SIZE + ACK_PAYLOAD_SIZE;
  }

  /** An already encoded frame (control frames are rare and encoded by the codec). */
  raw(frame: Buffer): void {
    if (frame.length > COPY_LIMIT) {
      this.flush();
      this.socket.write(frame);
      return;
    }
    this.reserve(frame.length);
    frame.copy(this.batch, this.position);
    this.position += frame.length;
  }

  flush(): void {
    if (this.position > this.batchStart) {
      // The written region is never touched again, so the socket may keep a view of it.
      this.socket.write(this.batch.subarray(this.batchStart, this.position));
      this.batchStart = this.position;
    }
  }

  private reserve(bytes: number): void {
    if (this.position + bytes > this.batch.length) {
      this.flush();
      this.batch = Buffer.allocUnsafe(BATCH_BYTES);
      this.batchStart = 0;
      this.position = 0;
    }
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => {
        this.flushScheduled = false;
        this.flushBound();
      });
    }
  }
}
