import { Duplex } from 'node:stream';
import type { RawData, WebSocket } from 'ws';

/**
 * A WebSocket device seen as the byte stream a DeviceConnection reads and
 * writes. MQTT over WebSocket (MQTT 5 §6) cuts the byte stream into binary
 * messages anywhere, so messages are pushed as plain bytes and the agent's
 * MQTT framer finds the packet boundaries.
 *
 * Backpressure holds both ways as on a TCP socket: when the read buffer is
 * full (the device connection paused us) the WebSocket's TCP socket stops
 * being read; a write completes only once ws has handed the message to its
 * socket, so `write()` returning false and 'drain' mean what they mean on
 * net.Socket and the agent holds back stream credit from a device that does
 * not read.
 */
export class WebSocketDuplex extends Duplex {
  constructor(
    readonly ws: WebSocket,
    /** For log lines, like net.Socket#remoteAddress. */
    readonly remoteAddress: string | undefined,
  ) {
    super({ allowHalfOpen: false });
    ws.on('message', (data: RawData, isBinary: boolean) => this.onMessage(data, isBinary));
    ws.on('close', () => {
      this.push(null);
      this.destroy();
    });
    ws.on('error', (err) => this.destroy(err));
  }

  /** Bytes written by the agent and not yet taken by the kernel: a write completes once its socket write does. */
  get bufferedBytes(): number {
    return this.writableLength;
  }

  override _read(): void {
    if (this.ws.isPaused) this.ws.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (err?: Error | null) => void): void {
    this.ws.send(chunk, { binary: true }, done);
  }

  /** Packets gathered in one turn (the agent corks) leave as one message. */
  override _writev(chunks: { chunk: Buffer }[], done: (err?: Error | null) => void): void {
    this.ws.send(chunks.length === 1 ? chunks[0].chunk : Buffer.concat(chunks.map((c) => c.chunk)), { binary: true }, done);
  }

  /** `end()` on a device (refusal, session over) is a normal WebSocket close; the peer's reply ends the stream. */
  override _final(done: (err?: Error | null) => void): void {
    this.ws.close(1000);
    done();
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    if (this.ws.readyState !== this.ws.CLOSED) this.ws.terminate();
    done(err);
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    if (!isBinary) {
      // MQTT 5 and 3.1.1 §6.0.0-1: any other than a binary frame closes the connection.
      this.destroy(new Error('text message from an MQTT device'));
      return;
    }
    const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
    if (!this.push(bytes)) this.ws.pause();
  }
}
