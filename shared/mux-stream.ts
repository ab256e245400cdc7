import { EdgemuxError } from './errors.js';

/** What a stream needs from the tunnel it currently runs over. */
export interface StreamCarrier {
  readonly congested: boolean;
  sendData(streamId: number, payload: Buffer): void;
  sendAck(streamId: number, consumed: number): void;
  /** Calls `stream.resumeWriting()` once the carrier drains. */
  waitForDrain(stream: MuxStream): void;
}

/** The local end a stream delivers to (a device socket on the agent, a broker link on the hub). */
export interface StreamSink {
  data(payload: Buffer): void;
  /** Credit or tunnel capacity came back: the sink may resume reading its source. */
  writable(): void;
}

export type StreamState = 'open' | 'closed';

/**
 * One logical stream with byte-credit flow control in each direction.
 * The sender keeps `sent - peerConsumed` below the peer's window; the
 * receiver acknowledges consumed bytes once a quarter window has built up,
 * so acknowledgements cost one small frame per quarter window, not per packet.
 */
export class MuxStream<S extends StreamSink = StreamSink, C extends StreamCarrier = StreamCarrier> {
  state: StreamState = 'open';
  private sent = 0;
  private peerConsumed = 0;
  private received = 0;
  private consumed = 0;
  private acknowledged = 0;
  private waitingForCredit = false;

  constructor(
    readonly id: number,
    /** The tunnel the stream runs over now; a resumed stream moves to another. */
    public carrier: C,
    readonly sink: S,
    /** Bytes the peer lets us have in flight. */
    private peerWindow: number,
    /** Bytes we let the peer have in flight. */
    readonly receiveWindow: number,
    /** Largest single frame the peer may overshoot the window by. */
    private readonly maxFramePayload: number,
  ) {}

  get inFlight(): number {
    return this.sent - this.peerConsumed;
  }

  get unconsumed(): number {
    return this.received - this.consumed;
  }

  /** True while the sink may keep writing without pausing its source. */
  get canWrite(): boolean {
    return this.state === 'open' && this.inFlight < this.peerWindow && !this.carrier.congested;
  }

  setPeerWindow(window: number): void {
    this.peerWindow = window;
  }

  /**
   * Sends one payload of whole MQTT packets. Returns false when the caller
   * should pause its source; `sink.writable()` is called when it may go on.
   */
  write(payload: Buffer): boolean {
    if (this.state !== 'open') return false;
    this.sent += payload.length;
    this.carrier.sendData(this.id, payload);
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
    if (this.waitingForCredit && this.inFlight < this.peerWindow) {
      this.waitingForCredit = false;
      if (this.carrier.congested) this.carrier.waitForDrain(this);
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

  /** The sink has passed `bytes` on (or dropped them): they no longer count against the window. */
  consume(bytes: number): void {
    this.consumed += bytes;
    if (this.state === 'open' && this.consumed - this.acknowledged >= this.receiveWindow / 4) {
      this.acknowledged = this.consumed;
      this.carrier.sendAck(this.id, this.consumed);
    }
  }

  /** Called by the carrier after it drained, for streams that asked to wait. */
  resumeWriting(): void {
    if (this.state !== 'open') return;
    if (this.inFlight >= this.peerWindow) {
      this.waitingForCredit = true;
      return;
    }
    this.sink.writable();
  }

  close(): void {
    this.state = 'closed';
  }

  private awaitCapacity(): void {
    if (this.inFlight >= this.peerWindow) this.waitingForCredit = true;
    else this.carrier.waitForDrain(this);
  }
}
