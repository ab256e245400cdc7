import { FrameType } from '../shared/frame-codec.js';
import type { Logger } from '../shared/logger.js';
import { MqttFramer, PacketType, packetTypeOf, PINGREQ_BYTES } from '../shared/mqtt-framing.js';
import type { MuxStream, StreamSink } from '../shared/mux-stream.js';
import type { Tunnel } from '../shared/tunnel.js';
import { BrokerPipe, type BrokerPipeOwner } from './broker-pipe.js';

/** How long a broker may take to read a closed device's last bytes before the link is cut. */
const BROKER_END_TIMEOUT_MS = 5000;

export type SessionState = 'attached' | 'closed';

export interface DeviceSessionOptions {
  clientId: string;
  agentId: string;
  /** Device keepalive in seconds from its CONNECT (MQTT 3.1.1 §3.1.2.10); 0 disables it. */
  keepaliveSeconds: number;
  maxPacketSize: number;
  log: Logger;
  onClosed(session: DeviceSession): void;
}

/**
 * The hub's half of one device: bytes from the device's stream go to the
 * broker connection, bytes from the broker go back as whole MQTT packets.
 * The device's PINGREQs never cross the tunnel, so the session keeps the
 * broker side alive by pinging on the device's behalf and swallowing the
 * PINGRESPs.
 */
export class DeviceSession implements StreamSink, BrokerPipeOwner {
  state: SessionState = 'attached';
  readonly pipe: BrokerPipe;
  stream!: MuxStream<DeviceSession, Tunnel>;
  tunnel!: Tunnel;
  private lastToBrokerAt = Date.now();
  private readonly framer: MqttFramer;
  private creditHeldBack = 0;
  private pendingBrokerWrite: (() => void) | null = null;
  private closedByAgent = false;

  constructor(private readonly options: DeviceSessionOptions) {
    this.framer = new MqttFramer(options.maxPacketSize);
    this.pipe = new BrokerPipe(this);
  }

  get clientId(): string {
    return this.options.clientId;
  }

  bind(tunnel: Tunnel, stream: MuxStream<DeviceSession, Tunnel>): void {
    this.tunnel = tunnel;
    this.stream = stream;
  }

  // device → broker
  data(payload: Buffer): void {
    this.lastToBrokerAt = Date.now();
    if (this.pipe.push(payload)) {
      this.stream.consume(payload.length);
    } else {
      this.creditHeldBack += payload.length;
    }
  }

  brokerReadable(): void {
    if (this.creditHeldBack === 0 || this.state === 'closed') return;
    const bytes = this.creditHeldBack;
    this.creditHeldBack = 0;
    this.stream.consume(bytes);
  }

  // broker → device
  fromBroker(chunk: Buffer, done: () => void): void {
    if (this.state === 'closed') {
      done();
      return;
    }
    let mayContinue = true;
    try {
      this.framer.push(chunk, (packet) => {
        if (packetTypeOf(packet) === PacketType.PINGRESP) return;
        mayContinue = this.stream.write(packet);
      });
    } catch (err) {
      this.options.log.error({ clientId: this.clientId, err }, 'broker wrote an unframeable packet');
      this.pipe.destroy();
      done();
      return;
    }
    if (mayContinue) done();
    else this.pendingBrokerWrite = done;
  }

  writable(): void {
    const done = this.pendingBrokerWrite;
    if (done === null) return;
    this.pendingBrokerWrite = null;
    done();
  }

  /** Called by the hub's sweep: keeps the broker's keepalive satisfied while the device is idle. */
  keepBrokerAlive(now: number): void {
    const keepaliveMs = this.options.keepaliveSeconds * 1000;
    if (this.state !== 'attached' || keepaliveMs === 0) return;
    if (now - this.lastToBrokerAt >= keepaliveMs / 2) {
      this.lastToBrokerAt = now;
      this.pipe.push(PINGREQ_BYTES);
    }
  }

  /** The agent closed the stream; `abrupt` means no DISCONNECT, so the broker must publish the will. */
  closeFromAgent(reason: string, abrupt: boolean): void {
    if (this.state === 'closed') return;
    this.closedByAgent = true;
    this.options.log.debug({ clientId: this.clientId, reason, abrupt }, 'device stream closed by agent');
    // Ending (not destroying) lets the broker read what the device sent last.
    // The broker itself publishes the will unless it saw a DISCONNECT, which
    // is exactly the abrupt case; the timer only guards a broker that stopped reading.
    this.pipe.push(null);
    setTimeout(() => this.pipe.destroy(), BROKER_END_TIMEOUT_MS).unref();
    this.finish();
  }

  brokerClosed(): void {
    if (this.state === 'closed') return;
    if (!this.closedByAgent) {
      this.tunnel.send({ type: FrameType.CLOSE, streamId: this.stream.id, body: { reason: 'broker closed the session', abrupt: false } });
    }
    this.finish();
  }

  private finish(): void {
    this.state = 'closed';
    this.stream.close();
    this.tunnel.streams.delete(this.stream.id);
    const done = this.pendingBrokerWrite;
    this.pendingBrokerWrite = null;
    done?.();
    this.options.onClosed(this);
  }
}
