import type { IConnectPacket } from 'mqtt-packet';
import type { Clock } from '../shared/clock.js';
import type { EndCode } from '../shared/end-reasons.js';
import type { Logger } from '../shared/logger.js';
import { PacketType, packetTypeOf, PINGREQ_BYTES, streamPayloadProblem, wholePacketSize } from '../shared/mqtt-framing.js';
import type { MuxStream, StreamSink } from '../shared/mux-stream.js';
import { type CloseIntent, isAttached, isClosing } from '../shared/stream-lifecycle.js';
import type { StreamEntry } from '../shared/stream-table.js';
import type { Tunnel } from '../shared/tunnel.js';
import { effectiveKeepalive, parseConnack, refusalConnack } from '../shared/connack.js';
import type { BrokerLink, BrokerLinkOwner } from './broker-link.js';
import { DeliveryFramer, type OversizedPacket, publishSummary } from './delivery-framer.js';
import type { HubCounters, RefusalReason } from './hub-counters.js';

/** Ends an operator asks for through the admin API. */
export type OperatorEndCode = 'operator-disconnected' | 'drained';

type BrokerEndCode = 'broker-closed' | 'device-disconnected' | 'broker-unavailable' | 'slow-consumer' | OperatorEndCode;

const END_DETAIL: Record<BrokerEndCode, string> = {
  'broker-closed': 'broker closed the session',
  'device-disconnected': 'device sent DISCONNECT',
  'broker-unavailable': 'no broker of the route could be reached',
  'slow-consumer': 'device did not read its messages',
  'operator-disconnected': 'disconnected by an operator',
  drained: 'agent drained',
};

/** Why a stream ended, as the end codes of docs/errors.md name it, and the words for people. */
export interface SessionEnd {
  code: EndCode;
  detail: string;
}

/**
 * The end code of a refusal's CLOSE: the refusal reason says more in the
 * hub's own log and metrics; the agent needs only the kind of end.
 */
function refusalEndCode(reason: RefusalReason): EndCode {
  if (reason === 'protocol-violation') return 'protocol-error';
  if (reason === 'connect-timeout') return 'connect-timeout';
  return 'refused';
}

/** How long a broker may take to read a closed device's last bytes before the link is cut. */
const BROKER_END_TIMEOUT_MS = 5000;
/** A session logs the deliveries it drops at most this often; a publisher decides how many there are. */
const DROP_LOG_INTERVAL_MS = 10_000;

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
  /** The broker accepted the device's CONNECT: from here on it is a device the hub has carried. */
  onAdmitted(session: DeviceSession): void;
  /** Hub-wide totals this session adds its traffic, drops and cut-offs to. */
  counters: HubCounters;
  /** The session refused its device; the hub counts and logs it. */
  onRefused(session: DeviceSession, reason: RefusalReason, detail: string): void;
  /** The broker ended the session: the stream closes, now or once it resumes. */
  brokerEnded(session: DeviceSession, close: CloseIntent): void;
  /** The session must end at once, keeping nothing (docs/protocol.md 5.3 rule 7). */
  refused(session: DeviceSession, close: CloseIntent): void;
}

/** MQTT 5 §3.14.2.1 reason codes the hub sends a device it ends. */
export const DISCONNECT_REASON = { administrativeAction: 0x98, useAnotherServer: 0x9c } as const;

const DISCONNECT_PACKET_TYPE_BYTE = 0xe0;

/** A DISCONNECT in the device's protocol: MQTT 3.1.1 §3.14 has no body, MQTT 5 §3.14.2 a reason code and no properties. */
function disconnectPacket(protocolVersion: number, reasonCode: number): Buffer {
  return protocolVersion === 5 ? Buffer.from([DISCONNECT_PACKET_TYPE_BYTE, 2, reasonCode, 0]) : Buffer.from([DISCONNECT_PACKET_TYPE_BYTE, 0]);
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
  /** Deliveries dropped because they are larger than the hub or the agent accepts. */
  droppedOversized = 0;
  /** The broker accepted the CONNECT (CONNACK return or reason code 0). */
  admitted = false;
  /** Traffic counters, read by the hub's sweep for the device registry. */
  readonly traffic = { bytesToBroker: 0, packetsToBroker: 0, bytesToDevice: 0, packetsToDevice: 0 };
  readonly connectedAt: number;
  /** When the device last sent a packet that crossed the tunnel (its PINGREQs are answered at the agent). */
  lastSeenAt: number;
  /** Name of the route that chose the device's broker; 'embedded' when none matched. */
  route = 'embedded';
  /** Why the session ended, for the hub's disconnect log; the first cause wins. */
  endReason: SessionEnd | null = null;
  private lastToBrokerAt: number;
  private readonly framer: DeliveryFramer;
  /** QoS 2 deliveries the hub received on the device's behalf: their PUBREL is answered here, never seen by the device. */
  private readonly answeredQos2 = new Set<number>();
  private dropLoggedAt = -Infinity;
  private dropsUnlogged = 0;
  private creditHeldBack = 0;
  /** Broker packets for the device waiting for stream credit; bounded by maxQueuedBytes. */
  private waiting: Buffer[] = [];
  private waitingBytes = 0;
  /** Why the broker connection is ending when the hub itself ended it. */
  private endingAs: BrokerEndCode = 'broker-closed';

  /** The device's keepalive (MQTT 3.1.1 §3.1.2.10), or the server's when an MQTT 5 broker set one; 0 disables it. */
  private keepaliveSeconds = 0;
  private version = 4;

  constructor(private readonly options: DeviceSessionOptions) {
    this.framer = new DeliveryFramer(options.maxPacketSize);
    this.openedAt = options.clock.now();
    this.connectedAt = this.lastSeenAt = this.lastToBrokerAt = this.openedAt;
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
    this.version = connect.protocolVersion ?? 4;
    this.link = makeLink(this);
  }

  /**
   * Ends a session the broker must not see: sends the CONNACK refusal, if
   * any, and CLOSE, and keeps nothing, so the agent's answering CLOSE finds
   * no stream (docs/protocol.md 5.3, rule 7). A broker connection already
   * made is dropped, as for a device that broke the protocol; that device
   * was admitted, so it ends as a disconnect with `reason`, not as a refusal.
   */
  refuse(code: RefusalReason, reason: string, connack: Buffer | null): void {
    if (this.state === 'closed') return;
    const endCode = refusalEndCode(code);
    if (this.link === null) this.options.onRefused(this, code, reason);
    else this.ended(endCode, reason);
    if (connack !== null) this.stream.write(connack);
    this.options.refused(this, { code: endCode, reason, abrupt: false });
  }

  get clientId(): string {
    return this.options.clientId;
  }

  get agentId(): string {
    return this.options.agentId;
  }

  /** The MQTT protocol level of the device's CONNECT; 4 (3.1.1) until it has been admitted. */
  get protocolVersion(): number {
    return this.version;
  }

  /** The device's keepalive in seconds, or the broker's Server Keep Alive. */
  get keepalive(): number {
    return this.keepaliveSeconds;
  }

  /** Where the resume grace period counts from, while the stream is detached. */
  get detachedAt(): number {
    const state = this.entry.state;
    return 'detachedAt' in state ? state.detachedAt : 0;
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
      this.refuse('protocol-violation', `protocol violation: ${problem}`, null);
      return;
    }
    if (this.link === null) {
      this.options.admit(this, payload.subarray(0, wholePacketSize(payload, 0, this.options.maxPacketSize)));
      if (this.link === null) return;
    }
    this.lastSeenAt = this.lastToBrokerAt = this.options.clock.now();
    // The broker closes once it reads a DISCONNECT, which is always the device's last packet: that close is the device's doing.
    if (packetTypeOf(payload) === PacketType.DISCONNECT) this.endingAs = 'device-disconnected';
    this.traffic.bytesToBroker += payload.length;
    this.traffic.packetsToBroker++;
    this.options.counters.bytesToBroker += payload.length;
    this.options.counters.messagesToBroker++;
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
        this.framer.push(chunk, (packet) => this.toDevice(packet), (oversized) => this.undeliverable(oversized));
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
    // MQTT 3.1.1 §3.2.2.3, MQTT 5 §3.2.2.2: the code follows the acknowledge flags in both.
    if (type === PacketType.CONNACK && !this.admitted && packet.length >= 4 && packet[3] === 0) {
      this.admitted = true;
      this.options.onAdmitted(this);
    }
    if (type === PacketType.PUBREL && this.answeredQos2.size > 0 && this.answeredQos2.delete(packet.readUInt16BE(2))) {
      this.link?.push(Buffer.from([0x70, 0x02, packet[2], packet[3]]));
      return;
    }
    if (packet.length > this.stream.maxPeerPayload) {
      // The agent would close the whole tunnel on it.
      this.undeliverable({ head: packet, size: packet.length });
      return;
    }
    this.traffic.bytesToDevice += packet.length;
    this.traffic.packetsToDevice++;
    this.options.counters.bytesToDevice += packet.length;
    this.options.counters.messagesToDevice++;
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
      this.options.counters.slowConsumerCutoffs++;
      this.waiting = [];
      this.waitingBytes = 0;
      this.endingAs = 'slow-consumer';
      this.link.destroy();
    }
  }

  /**
   * A packet the device cannot receive (larger than the hub's frames or the
   * agent's) is dropped, never the session for it: otherwise one retained or
   * queued message would cut its subscribers off on every reconnect. The
   * broker waits for an acknowledgement of QoS 1 and 2, and would deliver it
   * again forever, so the hub gives it on the device's behalf (MQTT 3.1.1
   * §4.3.2, §4.3.3), and answers the PUBREL that follows a PUBREC itself:
   * the device never saw that flow.
   */
  private undeliverable({ head, size }: OversizedPacket): void {
    const publish = publishSummary(head);
    this.droppedOversized++;
    if (publish !== null && publish.messageId !== null && this.link !== null && !this.link.destroyed) {
      const id = [publish.messageId >> 8, publish.messageId & 0xff];
      if (publish.qos === 1) {
        this.link.push(Buffer.from([0x40, 0x02, ...id]));
      } else {
        this.answeredQos2.add(publish.messageId);
        this.link.push(Buffer.from([0x50, 0x02, ...id]));
      }
    }
    const now = this.options.clock.now();
    if (now - this.dropLoggedAt < DROP_LOG_INTERVAL_MS) {
      this.dropsUnlogged++;
      return;
    }
    this.options.log.warn(
      {
        clientId: this.clientId,
        agentId: this.agentId,
        topic: publish?.topic,
        qos: publish?.qos,
        packetType: head[0] >> 4,
        bytes: size,
        maxBytes: Math.min(this.options.maxPacketSize, this.stream.maxPeerPayload),
        droppedSinceLastLine: this.dropsUnlogged,
        reason: 'larger than the device can receive through the tunnel',
      },
      'delivery dropped',
    );
    this.dropLoggedAt = now;
    this.dropsUnlogged = 0;
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
    this.options.onRefused(this, 'no-broker', reason);
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
    this.ended(this.endingAs, END_DETAIL[this.endingAs]);
    this.options.brokerEnded(this, { code: this.endingAs, reason: END_DETAIL[this.endingAs], abrupt: false });
  }

  /**
   * The hub ends the session for an operator. An MQTT 5 device first gets a
   * DISCONNECT with `reasonCode` (§3.14.2.1: 0x9C asks it to use another
   * server); a 3.1.1 device has no such packet (§3.14) and is simply closed,
   * so its library reconnects. `graceful` ends the broker side with a
   * DISCONNECT on the device's behalf, so no will is published for a device
   * expected back at once; otherwise the broker sees a lost connection.
   */
  endByHub(code: OperatorEndCode, reasonCode: number, graceful: boolean): boolean {
    // A session still waiting for its CONNECT has no broker side yet; its admission checks a drain.
    const link = this.link;
    if (this.state === 'closed' || this.closing || link === null) return false;
    this.endingAs = code;
    if (this.version === 5) this.stream.write(disconnectPacket(5, reasonCode));
    if (graceful) {
      // The broker answers a DISCONNECT by closing, which ends the session as if the device had left.
      link.push(disconnectPacket(this.version, 0));
      this.lastToBrokerAt = this.options.clock.now();
      this.options.clock.setTimeout(() => link.destroy(), BROKER_END_TIMEOUT_MS);
    } else {
      link.destroy();
    }
    return true;
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

  /** Names why the session ended, for the hub's disconnect line; the first cause wins. */
  ended(code: EndCode, detail: string): void {
    this.endReason ??= { code, detail };
  }

  /** The stream is forgotten: nothing more goes to the device. */
  released(): void {
    this.waiting = [];
    this.waitingBytes = 0;
  }
}
