import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { type Clock, systemClock, type Timer } from './clock.js';
import type { EndCode } from './end-reasons.js';
import { isBadInput } from './errors.js';
import {
  ACK_PAYLOAD_SIZE,
  type ControlFrame,
  encodeControlFrame,
  FRAME_HEADER_SIZE,
  FrameDecoder,
  type FrameHandler,
  FrameType,
  type GoodbyeBody,
  type GoodbyeCode,
} from './frame-codec.js';
import { FrameWriter } from './frame-writer.js';
import type { Logger } from './logger.js';
import type { MuxStream, StreamCarrier } from './mux-stream.js';
import { TUNNEL_DEFAULTS } from './tunnel-defaults.js';

/**
 * How long a stream's consumption may go unacknowledged when it falls short
 * of a quarter window: long enough to share one write among many streams,
 * short enough that the peer's replay buffer empties soon after traffic stops.
 */
const QUIET_ACK_DELAY_MS = 50;

export interface TunnelOptions {
  /** Largest frame payload accepted from the peer. */
  maxFramePayload: number;
  /** How often this side sends PING. */
  heartbeatMs: number;
  /** Silence after which the peer is declared dead, even if TCP never reports it. */
  deadAfterMs: number;
  /** Socket buffer above which the tunnel counts as congested and streams pause their sources. */
  highWaterBytes: number;
  /** How long a closing tunnel waits for the peer to take its last frames; TUNNEL_DEFAULTS.closeLingerMs when absent. */
  closeLingerMs?: number;
  /** Heartbeat, dead-peer check and quiet ACKs run on it; the system clock when absent. */
  clock?: Clock;
  log: Logger;
}

/** What crossed one tunnel, by frame kind: the WAN cost of the devices behind it. */
export interface TunnelTraffic {
  bytesIn: number;
  bytesOut: number;
  dataFramesIn: number;
  dataFramesOut: number;
  ackFramesIn: number;
  ackFramesOut: number;
  controlFramesIn: number;
  controlFramesOut: number;
}

export function emptyTraffic(): TunnelTraffic {
  return { bytesIn: 0, bytesOut: 0, dataFramesIn: 0, dataFramesOut: 0, ackFramesIn: 0, ackFramesOut: 0, controlFramesIn: 0, controlFramesOut: 0 };
}

export function addTraffic(into: TunnelTraffic, from: TunnelTraffic): void {
  for (const key of Object.keys(into) as (keyof TunnelTraffic)[]) into[key] += from[key];
}

export interface TunnelEvents {
  control: [frame: ControlFrame];
  /** The peer said GOODBYE; 'closed' follows at once. */
  goodbye: [body: GoodbyeBody];
  closed: [code: EndCode, detail: string];
}

/** Finds the stream attached to this tunnel with an id, for its DATA and ACK. */
export type StreamLookup = (streamId: number) => MuxStream | undefined;

const NO_STREAMS: StreamLookup = () => undefined;

/**
 * One multiplexed connection: frame decoding, gathered writes, heartbeat and
 * dispatch of DATA/ACK to the streams riding on it. Which streams those are
 * is the owner's stream table's to say (`routeStreams`); stream lifecycle
 * (OPEN, CLOSE, RESUME) is left to the owner through 'control' events.
 */
export class Tunnel extends EventEmitter<TunnelEvents> implements StreamCarrier {
  readonly traffic: TunnelTraffic = emptyTraffic();
  /** Largest frame payload the peer accepts, from its HELLO; until then our own. */
  peerMaxFramePayload: number;
  /** The peer's id from its HELLO (agent id or hub id). */
  peerId = '';
  /** Features both sides listed in HELLO (shared/hello.ts); none until the exchange is done. */
  capabilities: ReadonlySet<string> = new Set();
  /** Why the tunnel closed, once it has. */
  closedCode: EndCode | null = null;
  /** The same in words, for logs. */
  closedReason: string | null = null;
  /** The peer's GOODBYE, once it said one: the tunnel closed because the peer is going away, not because the network failed. */
  peerGoodbye: GoodbyeBody | null = null;
  /** Resolves once the socket is fully closed, after a close() lets the last frames out. */
  readonly socketClosed: Promise<void>;
  private readonly writer: FrameWriter;
  private readonly decoder: FrameDecoder;
  private readonly drainWaiters = new Set<MuxStream>();
  private readonly pendingAcks = new Set<MuxStream>();
  private ackTimer: Timer | null = null;
  private readonly clock: Clock;
  private lastReceivedAt: number;
  private readonly heartbeat: Timer;
  private readonly handler: FrameHandler;
  private lookup: StreamLookup = NO_STREAMS;

  constructor(
    readonly socket: Duplex,
    private readonly options: TunnelOptions,
  ) {
    super();
    this.socketClosed = new Promise((resolve) => socket.once('close', () => resolve()));
    this.peerMaxFramePayload = options.maxFramePayload;
    this.clock = options.clock ?? systemClock;
    this.lastReceivedAt = this.clock.now();
    this.writer = new FrameWriter(socket);
    this.decoder = new FrameDecoder(options.maxFramePayload);
    this.handler = {
      data: (streamId, payload) => {
        if (this.closedReason !== null) return;
        this.traffic.dataFramesIn++;
        this.lookup(streamId)?.onData(payload);
      },
      ack: (streamId, consumed) => {
        if (this.closedReason !== null) return;
        this.traffic.ackFramesIn++;
        this.lookup(streamId)?.onAck(consumed);
      },
      control: (frame) => {
        if (this.closedReason !== null) return;
        this.traffic.controlFramesIn++;
        this.onControl(frame);
      },
    };
    socket.on('data', (chunk: Buffer) => this.onBytes(chunk));
    socket.on('drain', () => this.onDrain());
    socket.on('error', (err) => this.close('transport-error', `socket error: ${err.message}`));
    socket.on('close', () => this.close('peer-closed', 'socket closed'));
    socket.on('end', () => this.close('peer-closed', 'peer ended the connection'));
    this.heartbeat = this.clock.setInterval(() => this.beat(), options.heartbeatMs);
  }

  /** DATA and ACK go to the streams `lookup` finds; until then they are ignored, as for streams not held. */
  routeStreams(lookup: StreamLookup): void {
    this.lookup = lookup;
  }

  get congested(): boolean {
    return this.socket.writableLength > this.options.highWaterBytes;
  }

  get isOpen(): boolean {
    return this.closedReason === null;
  }

  send(frame: ControlFrame): void {
    if (this.closedReason !== null) return;
    const encoded = encodeControlFrame(frame);
    this.traffic.controlFramesOut++;
    this.traffic.bytesOut += encoded.length;
    this.writer.raw(encoded);
  }

  sendData(streamId: number, payload: Buffer): Buffer {
    // A closed tunnel still hands back a private copy: the stream replays it elsewhere.
    if (this.closedReason !== null) return Buffer.from(payload);
    this.traffic.dataFramesOut++;
    this.traffic.bytesOut += FRAME_HEADER_SIZE + payload.length;
    return this.writer.data(streamId, payload);
  }

  sendAck(streamId: number, consumed: number): void {
    if (this.closedReason !== null) return;
    this.traffic.ackFramesOut++;
    this.traffic.bytesOut += FRAME_HEADER_SIZE + ACK_PAYLOAD_SIZE;
    this.writer.ack(streamId, consumed);
  }

  waitForDrain(stream: MuxStream): void {
    this.drainWaiters.add(stream);
  }

  scheduleAck(stream: MuxStream): void {
    this.pendingAcks.add(stream);
    if (this.ackTimer === null && this.closedReason === null) {
      this.ackTimer = this.clock.setTimeout(() => this.flushAcks(), QUIET_ACK_DELAY_MS);
    }
  }

  private flushAcks(): void {
    this.ackTimer = null;
    const streams = [...this.pendingAcks];
    this.pendingAcks.clear();
    for (const stream of streams) stream.flushAck();
  }

  /**
   * Says goodbye (the last frame this side sends on the tunnel) and closes.
   * Resolves once the peer has had the chance to read everything sent before.
   * `extra.problem` names the failed certificate check of a `certificate-refused`.
   */
  goodbye(code: GoodbyeCode, reason: string, extra: Pick<GoodbyeBody, 'problem'> = {}): Promise<void> {
    const body: GoodbyeBody = extra.problem !== undefined ? { code, reason, problem: extra.problem } : { code, reason };
    this.send({ type: FrameType.GOODBYE, streamId: 0, body });
    this.close(code, `said goodbye (${code}): ${reason}`);
    return this.socketClosed;
  }

  close(code: EndCode, detail: string = code): void {
    if (this.closedReason !== null) return;
    this.closedCode = code;
    this.closedReason = detail;
    this.heartbeat.cancel();
    this.ackTimer?.cancel();
    this.pendingAcks.clear();
    this.writer.flush();
    this.endSocket();
    this.drainWaiters.clear();
    this.emit('closed', code, detail);
  }

  /**
   * end(), not destroy(): destroy() discards what is still queued in the
   * socket, which is exactly the CLOSE and GOODBYE frames written last. The
   * linger timer bounds the wait when the peer never closes its side.
   */
  private endSocket(): void {
    if (this.socket.destroyed) return;
    const linger = this.clock.setTimeout(() => this.socket.destroy(), this.options.closeLingerMs ?? TUNNEL_DEFAULTS.closeLingerMs);
    this.socket.once('close', () => linger.cancel());
    // Whatever the peer still sends is read and dropped, so its close reaches us as a FIN, not stuck behind unread bytes.
    this.socket.resume();
    this.socket.end();
  }

  private onBytes(chunk: Buffer): void {
    // A closing tunnel still reads until the peer closes, but acts on nothing.
    if (this.closedReason !== null) return;
    this.lastReceivedAt = this.clock.now();
    this.traffic.bytesIn += chunk.length;
    try {
      this.decoder.push(chunk, this.handler);
    } catch (err) {
      if (!isBadInput(err)) throw err;
      const detail = `${err.code}: ${err.message}`;
      this.options.log.warn({ reason: 'protocol-error', detail }, 'closing tunnel on bad input');
      this.close('protocol-error', detail);
    }
  }

  private onControl(frame: ControlFrame): void {
    if (frame.type === FrameType.PING) {
      this.send({ type: FrameType.PONG, streamId: 0, body: frame.body });
      return;
    }
    if (frame.type === FrameType.PONG) return;
    if (frame.type === FrameType.GOODBYE) {
      this.peerGoodbye = frame.body;
      this.emit('goodbye', frame.body);
      // A peer refusing the tunnel says why; any other GOODBYE is the peer going away.
      const said = frame.body.code;
      const code: EndCode = said === 'identity-in-use' ? 'identity-in-use' : said === 'unsupported-version' ? 'unsupported-version' : 'peer-departed';
      this.close(code, `peer said goodbye (${frame.body.code}): ${frame.body.reason}`);
      return;
    }
    this.emit('control', frame);
  }

  private onDrain(): void {
    if (this.drainWaiters.size === 0) return;
    const waiters = [...this.drainWaiters];
    this.drainWaiters.clear();
    for (const stream of waiters) {
      if (this.congested) {
        this.drainWaiters.add(stream);
      } else {
        stream.resumeWriting();
      }
    }
  }

  private beat(): void {
    const now = this.clock.now();
    if (now - this.lastReceivedAt > this.options.deadAfterMs) {
      this.options.log.warn({ silentMs: now - this.lastReceivedAt }, 'peer silent past the dead-peer limit');
      this.close('heartbeat-timeout', 'heartbeat timeout');
      return;
    }
    this.send({ type: FrameType.PING, streamId: 0, body: { sentAt: now } });
  }
}
