import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { encodeFrame, type Frame, FrameDecoder, FrameType, type HelloBody, PROTOCOL_VERSION } from '../../shared/frame-codec.js';
import { TUNNEL_DEFAULTS } from '../../shared/tunnel-defaults.js';

const WAIT_MS = 5000;

/**
 * The agent side of a tunnel played with raw frames from the project's frame
 * codec over any Duplex (an in-memory pair, a TLS socket), so a test states
 * every byte the hub gets and sees every frame it sends. It answers the
 * hub's PINGs, as any agent must, and nothing else on its own.
 */
export class RawAgent {
  /** Every frame received, in order, the hub's PINGs included. */
  readonly frames: Frame[] = [];
  readonly closed: Promise<void>;
  private isClosed = false;
  private waiters: (() => void)[] = [];

  constructor(
    private readonly socket: Duplex,
    maxPayload: number = TUNNEL_DEFAULTS.maxFramePayload,
  ) {
    const decoder = new FrameDecoder(maxPayload);
    socket.on('data', (chunk: Buffer) => {
      decoder.push(chunk, {
        data: (streamId, payload) => this.record({ type: FrameType.DATA, streamId, payload: Buffer.from(payload) }),
        ack: (streamId, consumed) => this.record({ type: FrameType.ACK, streamId, consumed }),
        control: (frame) => {
          if (frame.type === FrameType.PING) this.send({ type: FrameType.PONG, streamId: 0, body: frame.body });
          this.record(frame);
        },
      });
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.isClosed = true;
        this.wake();
        resolve();
      }),
    );
  }

  /** A HELLO as the reference agent would send it, with `overrides` on top. */
  static hello(overrides: Partial<HelloBody> = {}): HelloBody {
    return {
      version: PROTOCOL_VERSION,
      role: 'agent',
      id: 'raw-agent',
      heartbeatMs: 60_000,
      streamWindow: TUNNEL_DEFAULTS.streamWindow,
      maxFramePayload: TUNNEL_DEFAULTS.maxFramePayload,
      instance: randomUUID(),
      capabilities: ['goodbye'],
      ...overrides,
    };
  }

  get isOpen(): boolean {
    return !this.isClosed;
  }

  send(frame: Frame): void {
    this.socket.write(encodeFrame(frame));
  }

  sendRaw(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Sends HELLO and resolves with the hub's. */
  async handshake(body: HelloBody = RawAgent.hello()): Promise<HelloBody> {
    this.send({ type: FrameType.HELLO, streamId: 0, body });
    const answer = await this.next((frame) => frame.type === FrameType.HELLO);
    return (answer as Extract<Frame, { type: typeof FrameType.HELLO }>).body;
  }

  /** Frames received other than the hub's heartbeat. */
  received(): Frame[] {
    return this.frames.filter((frame) => frame.type !== FrameType.PING);
  }

  /** Frames received on `streamId`, in order. */
  on(streamId: number, type?: number): Frame[] {
    return this.frames.filter((frame) => frame.streamId === streamId && (type === undefined || frame.type === type));
  }

  /** Payloads of the DATA frames received on `streamId`, in order. */
  dataOf(streamId: number): Buffer[] {
    return this.on(streamId, FrameType.DATA).map((frame) => (frame as Extract<Frame, { type: typeof FrameType.DATA }>).payload);
  }

  /** Resolves with the first frame received (before or after the call) that matches. */
  async next(match: (frame: Frame) => boolean, timeoutMs = WAIT_MS): Promise<Frame> {
    await this.until(() => this.frames.some(match), timeoutMs, 'the expected frame');
    return this.frames.find(match)!;
  }

  /** Resolves once the hub has closed the connection. */
  async waitClosed(timeoutMs = WAIT_MS): Promise<void> {
    await this.until(() => this.isClosed, timeoutMs, 'the hub to close the tunnel', true);
  }

  /** Resolves once no frame other than a PING has arrived for `quietMs`. */
  async quiet(quietMs = 300): Promise<void> {
    let count = -1;
    while (count !== this.received().length) {
      count = this.received().length;
      await new Promise((resolve) => setTimeout(resolve, quietMs));
    }
  }

  /** Drops the connection without a word, as a network failure would. */
  destroy(): void {
    this.socket.destroy();
  }

  private async until(condition: () => boolean, timeoutMs: number, what: string, closing = false): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!condition()) {
      if (this.isClosed && !closing) throw new Error(`tunnel closed while waiting for ${what}; received ${describe(this.received())}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; received ${describe(this.received())}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  private record(frame: Frame): void {
    this.frames.push(frame);
    this.wake();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}

function describe(frames: Frame[]): string {
  return JSON.stringify(frames.map((frame) => ({ type: frame.type, streamId: frame.streamId, ...('body' in frame ? { body: frame.body } : {}) })));
}
