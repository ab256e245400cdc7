import { EdgemuxError } from './errors.js';
import { ReplayBuffer } from './replay-buffer.js';

/** What a stream needs from the tunnel it currently runs over. */
export interface StreamCarrier {
  readonly congested: boolean;
  /** Largest DATA payload the peer accepts. */
  readonly peerMaxFramePayload: number;
  /** Sends a DATA frame; returns the copy of the payload it made, which the stream keeps for replay. */
  sendData(streamId: number, payload: Buffer): Buffer;
  sendAck(streamId: number, consumed: number): void;
  /** Calls `stream.resumeWriting()` once the carrier drains. */
  waitForDrain(stream: MuxStream): void;
  /** Calls `stream.flushAck()` soon, so a quiet stream still releases the peer's replay buffer. */
  scheduleAck(stream: MuxStream): void;
}

/** The local end a stream delivers to (a device socket on the agent, a broker link on the hub). */
export interface StreamSink {
  data(payload: Buffer): void;
  /** Credit or tunnel capacity came back: the sink may resume reading its source. */
  writable(): void;
}

/**
 * open: attached to a carrier and sending.
 * detached: its tunnel is gone; writes are kept for replay until it resumes.
 * closed: finished; nothing more is sent or delivered.
 */
export type StreamState = 'open' | 'detached' | 'closed';

/**
 * One logical stream with byte-credit flow control and replay in each
 * direction. The sender keeps `sent - peerConsumed` below the peer's window
 * and holds every unacknowledged payload, so the stream can resume on another
 * tunnel and resend exactly what the peer has not received. The receiver
 * acknowledges consumed bytes once a quarter window has built up, or shortly
 * after the stream goes quiet.
 */
export class MuxStream<S extends StreamSink = StreamSink, C extends StreamCarrier = StreamCarrier> {
  state: StreamState = 'open';
  private sent = 0;
  private peerConsumed = 0;
  private received = 0;
  private consumed = 0;
  private acknowledged = 0;
  private ackScheduled = false;
  private waitingForCredit = false;
  private readonly replay = new ReplayBuffer();
  private lastPeerMaxPayload: number;

  constructor(
    readonly id: number,
    /** The tunnel the stream runs over; null while detached. */
    public carrier: C | null,
    readonly sink: S,
    /** Bytes the peer lets us have in flight. */
    private peerWindow: number,
    /** Bytes we let the peer have in flight. */
    readonly receiveWindow: number,
    /** Largest single frame the peer may overshoot the window by. */
    private readonly maxFramePayload: number,
  ) {
    this.lastPeerMaxPayload = carrier?.peerMaxFramePayload ?? maxFramePayload;
  }

  /**
   * Largest payload `write` may be given: the limit of the current carrier's
   * peer, or of the last one while detached, since the same peer takes the replay.
   */
  get maxPeerPayload(): number {
    if (this.carrier !== null) this.lastPeerMaxPayload = this.carrier.peerMaxFramePayload;
    return this.lastPeerMaxPayload;
  }

  get inFlight(): number {
    return this.sent - this.peerConsumed;
  }

  /** Bytes received from the peer so far: what a RESUME or ACCEPT reports. */
  get receivedOffset(): number {
    return this.received;
  }

  /** Bytes held for replay. */
  get replayBytes(): number {
    return this.replay.bytes;
  }

  /** True while the sink may keep writing without pausing its source. */
  get canWrite(): boolean {
    if (this.state === 'closed' || this.inFlight >= this.peerWindow) return false;
    return this.carrier === null || !this.carrier.congested;
  }

  setPeerWindow(window: number): void {
    this.peerWindow = window;
  }

  /**
   * Sends one payload of whole MQTT packets, or keeps it for replay while
   * detached. Returns false when the caller should pause its source;
   * `sink.writable()` is called when it may go on.
   */
  write(payload: Buffer): boolean {
    if (this.state === 'closed') return false;
    this.sent += payload.length;
    if (this.state === 'open' && this.carrier !== null) {
      this.replay.append(this.carrier.sendData(this.id, payload));
    } else {
      this.replay.append(Buffer.from(payload));
    }
    if (this.canWrite) return true;
    this.awaitCapacity();
    return false;
  }

  /** Peer acknowledged consumption up to `consumed` bytes. */
  onAck(consumed: number): void {
    if (consumed > this.sent || consumed < this.peerConsumed) {
      throw new EdgemuxError('E_STREAM_PROTOCOL', `stream ${this.id}: ACK ${consumed} outside [${this.peerConsumed}, ${this.sent}]`);
    }
    this.peerConsumed = consumed;
    this.replay.releaseUpTo(consumed);
    if (this.waitingForCredit && this.inFlight < this.peerWindow) {
      this.waitingForCredit = false;
      if (this.carrier?.congested) this.carrier.waitForDrain(this);
      else this.sink.writable();
    }
  }

  onData(payload: Buffer): void {
    if (this.state !== 'open') return;
    this.received += payload.length;
    if (this.received - this.acknowledged > this.receiveWindow + this.maxFramePayload) {
      throw new EdgemuxError('E_STREAM_PROTOCOL', `stream ${this.id}: peer overran its credit window`);
    }
    this.sink.data(payload);
  }

  /** The sink has passed `bytes` on: they no longer count against the window. */
  consume(bytes: number): void {
    this.consumed += bytes;
    if (this.state !== 'open' || this.carrier === null) return;
    if (this.consumed - this.acknowledged >= this.receiveWindow / 4) {
      this.flushAck();
    } else if (!this.ackScheduled) {
      this.ackScheduled = true;
      this.carrier.scheduleAck(this);
    }
  }

  flushAck(): void {
    this.ackScheduled = false;
    if (this.state !== 'open' || this.carrier === null || this.consumed === this.acknowledged) return;
    this.acknowledged = this.consumed;
    this.carrier.sendAck(this.id, this.consumed);
  }

  /** Called by the carrier after it drained, for streams that asked to wait. */
  resumeWriting(): void {
    if (this.state === 'closed') return;
    if (this.inFlight >= this.peerWindow) {
      this.waitingForCredit = true;
      return;
    }
    // The drain may come from a tunnel the stream has since left.
    if (this.carrier?.congested) {
      this.carrier.waitForDrain(this);
      return;
    }
    this.sink.writable();
  }

  /** The tunnel under the stream is gone: keep everything for replay. */
  detach(): void {
    if (this.state === 'closed') return;
    if (this.carrier !== null) this.lastPeerMaxPayload = this.carrier.peerMaxFramePayload;
    this.state = 'detached';
    this.carrier = null;
    this.ackScheduled = false;
  }

  /** True when the peer's `received` (from RESUME or ACCEPT) is an offset the replay can start from. */
  canResumeFrom(peerReceived: number): boolean {
    return peerReceived >= this.peerConsumed && this.replay.canReplayFrom(peerReceived);
  }

  /**
   * Continues the stream on `carrier`. `peerReceived` is how much of this
   * stream the peer holds; everything after it is resent, nothing before it.
   */
  attach(carrier: C, peerReceived: number, peerWindow: number): void {
    if (this.state === 'closed') return;
    if (peerReceived < this.peerConsumed || peerReceived > this.sent) {
      throw new EdgemuxError('E_STREAM_PROTOCOL', `stream ${this.id}: peer reports ${peerReceived} received, outside [${this.peerConsumed}, ${this.sent}]`);
    }
    this.carrier = carrier;
    this.state = 'open';
    this.peerWindow = peerWindow;
    this.replay.replayFrom(peerReceived, (payload) => carrier.sendData(this.id, payload));
    // The peer's acknowledgements may have died with the old tunnel; restate ours.
    this.acknowledged = -1;
    this.flushAck();
    if (this.canWrite) {
      this.waitingForCredit = false;
      this.sink.writable();
    } else {
      this.awaitCapacity();
    }
  }

  close(): void {
    this.state = 'closed';
    this.carrier = null;
    this.replay.clear();
  }

  private awaitCapacity(): void {
    if (this.inFlight >= this.peerWindow) this.waitingForCredit = true;
    else this.carrier?.waitForDrain(this);
  }
}
