import type { IConnectPacket } from 'mqtt-packet';
import { FrameType } from '../shared/frame-codec.js';
import type { Logger } from '../shared/logger.js';
import { PacketType, packetTypeOf, PINGREQ_BYTES, streamPayloadProblem, wholePacketSize } from '../shared/mqtt-framing.js';
import type { MuxStream, StreamSink } from '../shared/mux-stream.js';
import type { Tunnel } from '../shared/tunnel.js';
import { effectiveKeepalive, parseConnack, refusalConnack } from '../shared/connack.js';
import type { BrokerLink, BrokerLinkOwner } from './broker-link.js';
import { DeliveryFramer, type OversizedPacket, publishSummary } from './delivery-framer.js';

/** How long a broker may take to read a closed device's last bytes before the link is cut. */
const BROKER_END_TIMEOUT_MS = 5000;
/** A session logs the deliveries it drops at most this often; a publisher decides how many there are. */
const DROP_LOG_INTERVAL_MS = 10_000;

/**
 * attached: its stream runs over a live tunnel.
 * detached: the tunnel is gone; the broker session stays up for the resume grace period.
 * closed: the broker connection is ended.
 */
export type SessionState = 'attached' | 'detached' | 'closed';

export type SessionStream = MuxStream<DeviceSession, Tunnel>;

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
  log: Logger;
  /**
   * The stream's first packet, its CONNECT, arrived: the hub either refuses
   * the session (`refuse`) or connects it to a broker (`connectBroker`)
   * before the CONNECT is passed on.
   */
  admit(session: DeviceSession, connect: Buffer): void;
  /** The broker accepted the device's CONNECT: from here on it is a device the hub has carried. */
  onAdmitted(session: DeviceSession): void;
  onClosed(session: DeviceSession): void;
}

/**
 * The hub's half of one device: bytes from the device's stream go to the
 * broker connection, bytes from the broker go back as whole MQTT packets.
 * The device's PINGREQs never cross the tunnel, so the session keeps the
 * broker side alive by pinging on the device's behalf and swallowing the
 * PINGRESPs.
 */
export class DeviceSession implements StreamSink, BrokerLinkOwner {
  state: SessionState = 'attached';
  /** The device's connection to its broker; null until the hub has admitted the stream's CONNECT. */
  link: BrokerLink | null = null;
  readonly openedAt = Date.now();
  stream!: SessionStream;
  detachedAt = 0;
  /** QoS 0 messages dropped because the device could not take them. */
  droppedQos0 = 0;
  /** Deliveries dropped because they are larger than the hub or the agent accepts. */
  droppedOversized = 0;
  /** The broker accepted the CONNECT (CONNACK return or reason code 0). */
  admitted = false;
  /** Traffic counters, read by the hub's sweep for the device registry. */
  readonly traffic = { bytesToBroker: 0, packetsToBroker: 0, bytesToDevice: 0, packetsToDevice: 0 };
  private lastToBrokerAt = Date.now();
  private readonly framer: DeliveryFramer;
  /** QoS 2 deliveries the hub received on the device's behalf: their PUBREL is answered here, never seen by the device. */
  private readonly answeredQos2 = new Set<number>();
  private dropLoggedAt = -Infinity;
  private dropsUnlogged = 0;
  private creditHeldBack = 0;
  /** Broker packets for the device waiting for stream credit; bounded by maxQueuedBytes. */
  private waiting: Buffer[] = [];
  private waitingBytes = 0;
  /** This side sent (or, while detached, owes) CLOSE and waits for the agent's. */
  private closing = false;
  /** The highest RESUME attempt honoured; older ones arrive over abandoned tunnels. */
  lastResumeAttempt = 0;

  /** The device's keepalive (MQTT 3.1.1 §3.1.2.10), or the server's when an MQTT 5 broker set one; 0 disables it. */
  private keepaliveSeconds = 0;
  private protocolVersion = 4;

  constructor(private readonly options: DeviceSessionOptions) {
    this.framer = new DeliveryFramer(options.maxPacketSize);
  }

  /** Broker output waiting for stream credit. */
  get queuedBytes(): number {
    return this.waitingBytes;
  }

  /** Device bytes received but not yet credited back to the agent, because the broker link is full. */
  get heldCredit(): number {
    return this.creditHeldBack;
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
  refuse(reason: string, connack: Buffer | null): void {
    if (this.state === 'closed') return;
    if (connack !== null) this.stream.write(connack);
    this.stream.carrier?.send({ type: FrameType.CLOSE, streamId: this.stream.id, body: { reason, abrupt: false } });
    const link = this.link;
    this.finish();
    link?.destroy();
  }

  get clientId(): string {
    return this.options.clientId;
  }

  get agentId(): string {
    return this.options.agentId;
  }

  bind(stream: SessionStream): void {
    this.stream = stream;
  }

  // device → broker
  data(payload: Buffer): void {
    if (this.closing || payload.length === 0) {
      this.stream.consume(payload.length);
      return;
    }
    const problem = streamPayloadProblem(payload, this.link === null, this.options.maxPacketSize);
    if (problem !== null) {
      this.options.log.warn({ clientId: this.clientId, agentId: this.agentId, streamId: this.stream.id, reason: problem }, 'device session ended: protocol violation');
      this.refuse(`protocol violation: ${problem}`, null);
      return;
    }
    if (this.link === null) {
      this.options.admit(this, payload.subarray(0, wholePacketSize(payload, 0, this.options.maxPacketSize)));
      if (this.link === null) return;
    }
    this.lastToBrokerAt = Date.now();
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
        { clientId: this.clientId, agentId: this.agentId, queuedBytes: this.waitingBytes, reason: 'slow consumer' },
        'device is not reading; ending its session',
      );
      this.waiting = [];
      this.waitingBytes = 0;
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
    const now = Date.now();
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

  /** The tunnel under the stream died: hold the broker session for the resume grace period. */
  detach(now: number): void {
    if (this.state !== 'attached') return;
    this.state = 'detached';
    this.detachedAt = now;
    this.stream.detach();
  }

  /** The agent resumed the stream on `tunnel`; replays what the agent has not received. */
  reattach(tunnel: Tunnel, agentReceived: number, agentWindow: number): void {
    if (this.state === 'closed') return;
    this.state = 'attached';
    this.stream.attach(tunnel, agentReceived, agentWindow);
    if (this.closing) this.sendClose();
  }

  /**
   * The agent closed the stream. If this side had already sent its CLOSE, the
   * agent's confirms it; otherwise the device went away (`abrupt`: without
   * DISCONNECT, so the broker publishes the will) and the agent gets a CLOSE back.
   */
  closeFromAgent(reason: string, abrupt: boolean): void {
    if (this.state === 'closed') return;
    if (this.closing) {
      this.finish();
      return;
    }
    this.options.log.debug({ clientId: this.clientId, reason, abrupt }, 'device session ended by agent');
    this.stream.carrier?.send({ type: FrameType.CLOSE, streamId: this.stream.id, body: { reason: 'closed', abrupt: false } });
    this.endBrokerSide();
  }

  /**
   * The session cannot go on (resume grace period over, the agent or the hub
   * going away): end the broker session as an abrupt disconnect, so the
   * broker publishes the will unless it read the device's DISCONNECT.
   */
  expire(reason = 'resume grace period expired'): void {
    if (this.state === 'closed') return;
    if (this.closing) {
      this.finish();
      return;
    }
    this.options.log.info({ clientId: this.clientId, agentId: this.agentId, streamId: this.stream.id, reason }, 'device session ended');
    this.endBrokerSide();
  }

  brokerUnavailable(reason: string): void {
    if (this.state === 'closed') return;
    this.options.log.warn({ clientId: this.clientId, agentId: this.agentId, reason }, 'device refused: no broker');
    this.stream.write(refusalConnack(this.protocolVersion, 'server-unavailable'));
    this.brokerClosed();
  }

  /**
   * The broker ended the session (DISCONNECT handled, takeover, refusal). The
   * stream and its replay buffer stay until the agent confirms the CLOSE, so
   * the broker's last packets reach the device even across a tunnel loss.
   */
  brokerClosed(): void {
    if (this.state === 'closed' || this.closing) return;
    this.closing = true;
    this.waiting = [];
    this.waitingBytes = 0;
    if (this.state === 'attached') this.sendClose();
  }

  private sendClose(): void {
    this.stream.carrier?.send({ type: FrameType.CLOSE, streamId: this.stream.id, body: { reason: 'broker closed the session', abrupt: false } });
  }

  private endBrokerSide(): void {
    // Ending (not destroying) lets the broker read what the device sent last.
    // The broker itself publishes the will unless it saw a DISCONNECT, which
    // is exactly the abrupt case; the timer only guards a broker that stopped reading.
    this.finish();
    const link = this.link;
    if (link === null) return;
    link.push(null);
    setTimeout(() => link.destroy(), BROKER_END_TIMEOUT_MS).unref();
  }

  private finish(): void {
    this.state = 'closed';
    this.stream.carrier?.streams.delete(this.stream.id);
    this.stream.close();
    this.waiting = [];
    this.waitingBytes = 0;
    this.options.onClosed(this);
  }
}
