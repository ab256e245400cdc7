import type { IConnectPacket } from 'mqtt-packet';
import type { Clock } from '../shared/clock.js';
import type { Logger } from '../shared/logger.js';
import { MqttFramer, PacketType, packetTypeOf, PINGREQ_BYTES, streamPayloadProblem, wholePacketSize } from '../shared/mqtt-framing.js';
import type { MuxStream, StreamSink } from '../shared/mux-stream.js';
import { type CloseIntent, isAttached, isClosing } from '../shared/stream-lifecycle.js';
import type { StreamEntry } from '../shared/stream-table.js';
import type { Tunnel } from '../shared/tunnel.js';
import { effectiveKeepalive, parseConnack, refusalConnack } from '../shared/connack.js';
import type { BrokerLink, BrokerLinkOwner } from './broker-link.js';

type BrokerEndCode = 'broker-closed' | 'device-disconnected' | 'broker-unavailable' | 'slow-consumer' | 'packet-too-large';

const END_DETAIL: Record<BrokerEndCode, string> = {
  'broker-closed': 'broker closed the session',
  'device-disconnected': 'broker closed the session after the device disconnected',
  'broker-unavailable': 'no broker of the route could be reached',
  'slow-consumer': 'device did not read its messages',
  'packet-too-large': 'broker packet larger than the agent accepts',
};

/** How long a broker may take to read a closed device's last bytes before the link is cut. */
const BROKER_END_TIMEOUT_MS = 5000;

/**
 * attached: its stream runs over a live tunnel.
 * detached: the tunnel is gone; the broker session stays up for the resume grace period.
 * closed: the stream is forgotten and the broker connection ended.
 */
export type SessionState = 'attached' | 'detached' | 'closed';

export type SessionStream = MuxStream<DeviceSession, Tunnel>;
export type SessionEntry = StreamEntry<DeviceSession>;

export interface DeviceSessionOptions {
  /** The client ID of the stream's OPEN; the hub admits only a CONNECT that names the same. */
  clientId: string;
  agentId: string;
  maxPacketSize: number;
  /**
   * Bytes the broker may queue for a device that is not reading before the
   * session is cut as a slow consumer; the broker would otherwise buffer
   * without limit.
   */
  maxQueuedBytes: number;
  /** Broker keepalive, CONNECT timeout and the broker's last read count on it. */
  clock: Clock;
  log: Logger;
  /**
   * The stream's first packet, its CONNECT, arrived: the hub either refuses
   * the session (`refuse`) or connects it to a broker (`connectBroker`)
   * before the CONNECT is passed on.
   */
  admit(session: DeviceSession, connect: Buffer): void;
  /** The broker ended the session: the stream closes, now or once it resumes. */
  brokerEnded(session: DeviceSession, close: CloseIntent): void;
  /** The session must end at once, keeping nothing (docs/protocol.md 5.3 rule 7). */
  refused(session: DeviceSession, close: CloseIntent): void;
}

/**
 * The hub's half of one device: bytes from the device's stream go to the
 * broker connection, bytes from the broker go back as whole MQTT packets.
 * The device's PINGREQs never cross the tunnel, so the session keeps the
 * broker side alive by pinging on the device's behalf and swallowing the
 * PINGRESPs.
 */
export class DeviceSession implements StreamSink, BrokerLinkOwner {
  /** The device's connection to its broker; null until the hub has admitted the stream's CONNECT. */
  link: BrokerLink | null = null;
  readonly openedAt: number;
  /** The hub's stream table holds the stream and its lifecycle state. */
  private entry!: SessionEntry;
  /** QoS 0 messages dropped because the device could not take them. */
  droppedQos0 = 0;
  /** Traffic counters, read by the hub's sweep for the device registry. */
  readonly traffic = { bytesToBroker: 0, packetsToBroker: 0, bytesToDevice: 0, packetsToDevice: 0 };
  private lastToBrokerAt: number;
  private readonly framer: MqttFramer;
  private creditHeldBack = 0;
  /** Broker packets for the device waiting for stream credit; bounded by maxQueuedBytes. */
  private waiting: Buffer[] = [];
  private waitingBytes = 0;
  /** Why the broker connection is ending when the hub itself ended it. */
  private endingAs: BrokerEndCode = 'broker-closed';

  /** The device's keepalive (MQTT 3.1.1 §3.1.2.10), or the server's when an MQTT 5 broker set one; 0 disables it. */
  private keepaliveSeconds = 0;
  private protocolVersion = 4;

  constructor(private readonly options: DeviceSessionOptions) {
    this.framer = new MqttFramer(options.maxPacketSize);
    this.openedAt = options.clock.now();
    this.lastToBrokerAt = this.openedAt;
  }

  /** Broker output waiting for stream credit. */
  get queuedBytes(): number {
    return this.waitingBytes;
  }

  /** Device bytes received but not yet credited back to the agent, because the broker link is full. */
  get heldCredit(): number {
    return this.creditHeldBack;
  }

  get stream(): SessionStream {
    return this.entry.stream;
  }

  get state(): SessionState {
    const state = this.entry.state;
    if (state.phase === 'forgotten') return 'closed';
    return isAttached(state) ? 'attached' : 'detached';
  }

  /** This side sent (or, while detached, owes) CLOSE and waits for the agent's. */
  private get closing(): boolean {
    return isClosing(this.entry.state);
  }

  get awaitingConnect(): boolean {
    return this.link === null && this.state !== 'closed';
  }

  /** Admits the session on its checked CONNECT, whose values replace those the OPEN stated. */
  connectBroker(connect: IConnectPacket, makeLink: (owner: BrokerLinkOwner) => BrokerLink): void {
    this.keepaliveSeconds = connect.keepalive ?? 0;
    this.protocolVersion = connect.protocolVersion ?? 4;
    this.link = makeLink(this);
  }

  /**
   * Ends a session the broker must not see: sends the CONNACK refusal, if
   * any, and CLOSE, and keeps nothing, so the agent's answering CLOSE finds
   * no stream (docs/protocol.md 5.3, rule 7). A broker connection already
   * made is dropped, as for a device that broke the protocol.
   */
  refuse(code: 'refused' | 'protocol-error' | 'connect-timeout', reason: string, connack: Buffer | null): void {
    if (this.state === 'closed') return;
    if (connack !== null) this.stream.write(connack);
    this.options.refused(this, { code, reason, abrupt: false });
  }

  get clientId(): string {
    return this.options.clientId;
  }

  get agentId(): string {
    return this.options.agentId;
  }

  bind(entry: SessionEntry): void {
    this.entry = entry;
  }

  // device → broker
  data(payload: Buffer): void {
    if (this.closing || payload.length === 0) {
      this.stream.consume(payload.length);
      return;
    }
    const problem = streamPayloadProblem(payload, this.link === null, this.options.maxPacketSize);
    if (problem !== null) {
      this.options.log.warn({ clientId: this.clientId, agentId: this.agentId, streamId: this.stream.id, reason: 'protocol-error', detail: problem }, 'device session ended: protocol violation');
      this.refuse('protocol-error', `protocol violation: ${problem}`, null);
      return;
    }
    if (this.link === null) {
      this.options.admit(this, payload.subarray(0, wholePacketSize(payload, 0, this.options.maxPacketSize)));
      if (this.link === null) return;
    }
    this.lastToBrokerAt = this.options.clock.now();
    // The broker closes once it reads a DISCONNECT, which is always the device's last packet: that close is the device's doing.
    if (packetTypeOf(payload) === PacketType.DISCONNECT) this.endingAs = 'device-disconnected';
    this.traffic.bytesToBroker += payload.length;
    this.traffic.packetsToBroker++;
    if (this.link!.push(payload)) {
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
  //
  // The broker is never backpressured by one device: aedes waits for each
  // delivery before it takes the publisher's next message, so a stalled
  // subscriber would stall its publishers. Instead packets wait here, up to
  // a bound, while the stream has no credit.
  fromBroker(chunk: Buffer, done: () => void): void {
    if (this.state !== 'closed') {
      try {
        this.framer.push(chunk, (packet) => this.toDevice(packet));
      } catch (err) {
        this.options.log.error({ clientId: this.clientId, err }, 'broker wrote an unframeable packet');
        this.link?.destroy();
      }
    }
    done();
  }

  private toDevice(packet: Buffer): void {
    const type = packetTypeOf(packet);
    if (type === PacketType.PINGRESP) return;
    if (type === PacketType.CONNACK && this.protocolVersion === 5) {
      this.keepaliveSeconds = effectiveKeepalive(this.keepaliveSeconds, parseConnack(packet, 5));
    }
    if (packet.length > this.stream.maxPeerPayload) {
      // The agent would close the whole tunnel on it; only this device's session ends.
      this.options.log.warn(
        { clientId: this.clientId, agentId: this.agentId, bytes: packet.length, reason: 'packet-too-large', detail: 'packet larger than the agent accepts' },
        'ending device session',
      );
      this.endingAs = 'packet-too-large';
      this.link?.destroy();
      return;
    }
    this.traffic.bytesToDevice += packet.length;
    this.traffic.packetsToDevice++;
    if (this.waiting.length === 0 && this.stream.canWrite) {
      this.stream.write(packet);
      return;
    }
    // At most once allows it (MQTT 3.1.1 §4.3.1): a device that cannot keep
    // up loses QoS 0 messages instead of the hub queueing them.
    if (type === PacketType.PUBLISH && (packet[0] & 0x06) === 0) {
      this.droppedQos0++;
      return;
    }
    this.waiting.push(packet);
    this.waitingBytes += packet.length;
    if (this.waitingBytes > this.options.maxQueuedBytes && this.link !== null && !this.link.destroyed) {
      this.options.log.warn(
        { clientId: this.clientId, agentId: this.agentId, queuedBytes: this.waitingBytes, reason: 'slow-consumer' },
        'device is not reading; ending its session',
      );
      this.waiting = [];
      this.waitingBytes = 0;
      this.endingAs = 'slow-consumer';
      this.link.destroy();
    }
  }

  writable(): void {
    let sent = 0;
    while (sent < this.waiting.length && this.stream.canWrite) {
      const packet = this.waiting[sent++];
      this.waitingBytes -= packet.length;
      this.stream.write(packet);
    }
    if (sent > 0) this.waiting = this.waiting.slice(sent);
  }

  /** Called by the hub's sweep: keeps the broker's keepalive satisfied while the device is idle or away. */
  keepBrokerAlive(now: number): void {
    const keepaliveMs = this.keepaliveSeconds * 1000;
    if (this.state === 'closed' || this.closing || keepaliveMs === 0 || this.link === null) return;
    if (now - this.lastToBrokerAt >= keepaliveMs / 2) {
      this.lastToBrokerAt = now;
      this.link.push(PINGREQ_BYTES);
    }
  }

  brokerUnavailable(reason: string): void {
    if (this.state === 'closed') return;
    this.options.log.warn({ clientId: this.clientId, agentId: this.agentId, reason: 'broker-unavailable', detail: reason }, 'device refused: no broker');
    this.stream.write(refusalConnack(this.protocolVersion, 'server-unavailable'));
    this.endingAs = 'broker-unavailable';
    this.brokerClosed();
  }

  /**
   * The broker ended the session (DISCONNECT handled, takeover, refusal). The
   * stream and its replay buffer stay until the agent confirms the CLOSE, so
   * the broker's last packets reach the device even across a tunnel loss.
   */
  brokerClosed(): void {
    if (this.state === 'closed' || this.closing) return;
    this.waiting = [];
    this.waitingBytes = 0;
    this.options.brokerEnded(this, { code: this.endingAs, reason: END_DETAIL[this.endingAs], abrupt: false });
  }

  /**
   * Ends the broker connection after the broker has read what the device
   * sent last, without a DISCONNECT of ours: the broker publishes the will
   * unless it read the device's own, which is exactly the abrupt case. The
   * timer only guards a broker that stopped reading.
   */
  endBroker(): void {
    const link = this.link;
    if (link === null) return;
    link.push(null);
    this.options.clock.setTimeout(() => link.destroy(), BROKER_END_TIMEOUT_MS);
  }

  /** Cuts the broker connection: a device that broke the rules, so the broker publishes the will. */
  dropBroker(): void {
    this.link?.destroy();
  }

  /** The stream is forgotten: nothing more goes to the device. */
  released(): void {
    this.waiting = [];
    this.waitingBytes = 0;
  }
}
