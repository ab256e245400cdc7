import { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';
import { FRAME_HEADER_SIZE } from '../frame-codec.js';

/**
 * Largest WebSocket message a sender writes. Message boundaries mean nothing
 * to the tunnel (it is a byte stream), so a larger write is cut into views of
 * itself: the receiver's per-message memory then needs no knowledge of the
 * sender's batches, only of the frame limit.
 */
export const WS_MESSAGE_BYTES = 64 * 1024;

/**
 * ws buffers a whole message before handing it over, so its maxPayload is the
 * tunnel's per-connection read bound: as much as one whole frame, and never
 * less than a full message.
 */
export function wsMaxPayload(maxFramePayload: number): number {
  return Math.max(WS_MESSAGE_BYTES, maxFramePayload + FRAME_HEADER_SIZE);
}

/**
 * The tunnel's byte stream over a WebSocket: binary messages in, binary
 * messages out. Backpressure is that of the TLS socket under the WebSocket:
 * a write completes when ws has handed it to that socket and the socket has
 * flushed it, and writableLength counts what the socket still holds
 * (bufferedAmount), so a Tunnel sees congestion and drain as on raw TLS.
 */
export class WebSocketDuplex extends Duplex {
  /** Bytes handed to ws whose write has not completed: already counted in bufferedAmount. */
  private inFlight = 0;

  constructor(private readonly ws: WebSocket) {
    super({ allowHalfOpen: false });
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        // A text message cannot come from a tunnel peer: close as on a malformed frame.
        ws.close(1003, 'binary messages only');
        this.destroy(new Error('WebSocket text message on a tunnel'));
        return;
      }
      if (!this.push(data)) ws.pause();
    });
    ws.once('close', () => {
      this.push(null);
      this.destroy();
    });
    ws.on('error', (err) => this.destroy(err));
  }

  /** Like a socket's writableLength: bytes written and not yet flushed to the kernel, here and beneath. */
  unflushedBytes(queuedHere: number): number {
    return queuedHere - this.inFlight + this.ws.bufferedAmount;
  }

  /** The address of the peer, as a socket would report it. */
  get remoteAddress(): string | undefined {
    return (this.ws as unknown as { _socket?: { remoteAddress?: string } })._socket?.remoteAddress;
  }

  override _read(): void {
    this.ws.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.send([chunk], callback);
  }

  override _writev(chunks: { chunk: Buffer }[], callback: (error?: Error | null) => void): void {
    this.send(
      chunks.map(({ chunk }) => chunk),
      callback,
    );
  }

  override _final(callback: (error?: Error | null) => void): void {
    // Queued behind every message sent so far: the peer reads them all, then the close.
    this.ws.close(1000);
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.ws.readyState !== this.ws.CLOSED) this.ws.terminate();
    callback(error);
  }

  private send(chunks: Buffer[], callback: (error?: Error | null) => void): void {
    if (this.ws.readyState !== this.ws.OPEN) {
      callback(new Error('WebSocket is not open'));
      return;
    }
    const messages: Buffer[] = [];
    for (const chunk of chunks) {
      for (let offset = 0; offset < chunk.length; offset += WS_MESSAGE_BYTES) {
        messages.push(chunk.subarray(offset, offset + WS_MESSAGE_BYTES));
      }
    }
    let bytes = 0;
    for (const message of messages) bytes += message.length;
    this.inFlight += bytes;
    // ws writes messages in order, so the last one's completion is the whole batch's.
    for (let i = 0; i < messages.length; i++) {
      const last = i === messages.length - 1;
      this.ws.send(messages[i], { binary: true, compress: false }, last ? (err) => {
        this.inFlight -= bytes;
        callback(err ?? null);
      } : undefined);
    }
  }
}

// Node declares writableLength as a data property for TypeScript but an accessor at run time.
const queuedLength = Object.getOwnPropertyDescriptor(Duplex.prototype, 'writableLength')!.get!;
Object.defineProperty(WebSocketDuplex.prototype, 'writableLength', {
  get(this: WebSocketDuplex): number {
    return this.unflushedBytes(queuedLength.call(this) as number);
  },
});
