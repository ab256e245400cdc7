import { randomUUID } from 'node:crypto';
import tls from 'node:tls';
import { type ControlFrame, encodeControlFrame, encodeFrame, type Frame, FrameDecoder, FrameType, PROTOCOL_VERSION } from '../../shared/frame-codec.js';
import type { TlsMaterial } from '../../shared/pki.js';
import { TUNNEL_DEFAULTS } from '../../shared/tunnel-defaults.js';

/**
 * An agent that speaks the tunnel protocol with the project's own frame codec
 * over a real mutual-TLS socket, and sends whatever a test tells it to: the
 * hub must hold against it what it would hold against a compromised agent.
 */
export class HostileAgent {
  private readonly frames: Frame[] = [];
  private waiters: (() => void)[] = [];
  readonly closed: Promise<void>;

  private constructor(private readonly socket: tls.TLSSocket) {
    const decoder = new FrameDecoder(TUNNEL_DEFAULTS.maxFramePayload);
    socket.on('data', (chunk: Buffer) => {
      decoder.push(chunk, {
        data: (streamId, payload) => this.record({ type: FrameType.DATA, streamId, payload: Buffer.from(payload) }),
        ack: (streamId, consumed) => this.record({ type: FrameType.ACK, streamId, consumed }),
        control: (frame) => this.record(frame),
      });
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  /** Connects with `cert` and completes the HELLO exchange. */
  static async connect(port: number, ca: string, cert: TlsMaterial): Promise<HostileAgent> {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, cert: cert.cert, key: cert.key });
    await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    const agent = new HostileAgent(socket);
    agent.control({
      type: FrameType.HELLO,
      streamId: 0,
      body: {
        version: PROTOCOL_VERSION,
        role: 'agent',
        id: 'hostile',
        heartbeatMs: 60_000,
        streamWindow: TUNNEL_DEFAULTS.streamWindow,
        maxFramePayload: TUNNEL_DEFAULTS.maxFramePayload,
        instance: randomUUID(),
      },
    });
    await agent.next((frame) => frame.type === FrameType.HELLO);
    return agent;
  }

  control(frame: ControlFrame): void {
    this.socket.write(encodeControlFrame(frame));
  }

  /** Opens `streamId` announcing `clientId`, and sends `connect` as its first DATA. */
  open(streamId: number, clientId: string, connect: Buffer, extra: { username?: string; cleanSession?: boolean } = {}): void {
    this.control({
      type: FrameType.OPEN,
      streamId,
      body: { clientId, window: TUNNEL_DEFAULTS.streamWindow, keepalive: 30, protocolVersion: 4, cleanSession: extra.cleanSession ?? true, ...(extra.username !== undefined ? { username: extra.username } : {}) },
    });
    this.data(streamId, connect);
  }

  data(streamId: number, payload: Buffer): void {
    this.socket.write(encodeFrame({ type: FrameType.DATA, streamId, payload }));
  }

  /** Bytes as they are, for what the codec will not encode: unknown types, lying headers. */
  raw(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Frames received on `streamId` so far, ACKs left out. */
  framesOf(streamId: number): Frame[] {
    return this.frames.filter((frame) => frame.streamId === streamId && frame.type !== FrameType.ACK);
  }

  /** Resolves with the first frame received (before or after the call) that matches. */
  async next(match: (frame: Frame) => boolean): Promise<Frame> {
    for (;;) {
      const found = this.frames.find(match);
      if (found !== undefined) return found;
      await new Promise<void>((resolve, reject) => {
        this.waiters.push(resolve);
        this.closed.then(() => reject(new Error('tunnel closed while waiting for a frame')));
      });
    }
  }

  close(): void {
    this.socket.destroy();
  }

  private record(frame: Frame): void {
    this.frames.push(frame);
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}
