import mqttPacket, { type ISubscription, type Packet } from 'mqtt-packet';
import { parseConnect } from '../shared/mqtt-connect.js';
import { encodeVariableByteInteger, PacketType } from '../shared/mqtt-framing.js';

/**
 * Device bytes in flight to the broker (QoS 1/2 PUBLISHes, PUBRELs,
 * SUBSCRIBEs and UNSUBSCRIBEs not yet acknowledged) above which the link holds
 * back stream credit until acknowledgements free some: the copies kept for a
 * resend are bounded like every other queue.
 */
export const MAX_INFLIGHT_BYTES = 1024 * 1024;
/**
 * Subscriptions remembered per device for a session the broker lost. A device
 * with more cannot be restored faithfully; it is disconnected instead, as
 * before, and subscribes again itself.
 */
export const MAX_REMEMBERED_SUBSCRIPTIONS = 1000;

const DUP_FLAG = 0x08;
/** MQTT 5 §3.3.2.3.4 */
const TOPIC_ALIAS = 0x23;

/** What to do with a packet the device sends. */
export type DeviceAction = { kind: 'send'; packet: Buffer } | { kind: 'swallow' } | { kind: 'answer'; packet: Buffer };

interface RememberedSubscription {
  options: ISubscription;
  properties: mqttPacket.ISubscribePacket['properties'];
}

function parseOne(bytes: Buffer, protocolVersion: number): Packet | null {
  const parser = mqttPacket.parser({ protocolVersion });
  let parsed: Packet | null = null;
  parser.on('packet', (packet: Packet) => (parsed = packet));
  parser.on('error', () => (parsed = null));
  parser.parse(bytes);
  return parsed;
}

function packetIdOf(packet: Buffer, offset: number): number {
  return packet.length >= offset + 2 ? packet.readUInt16BE(offset) : 0;
}

/** Offset of the variable header: after the first byte and the remaining length. */
function bodyOffset(packet: Buffer): number {
  let offset = 1;
  while (offset < 5 && (packet[offset] & 0x80) !== 0) offset++;
  return offset + 1;
}


function readVarint(buf: Buffer, offset: number): { value: number; end: number } | null {
  let value = 0;
  let multiplier = 1;
  for (let i = 0; i < 4 && offset + i < buf.length; i++) {
    const byte = buf[offset + i];
    value += (byte & 0x7f) * multiplier;
    if ((byte & 0x80) === 0) return { value, end: offset + i + 1 };
    multiplier *= 128;
  }
  return null;
}

/**
 * Where an MQTT 5 PUBLISH keeps its topic, and its Topic Alias if it has one
 * (§3.3.2.3.4); null when the packet does not parse this far.
 */
export function publishTopicAlias(packet: Buffer): { topicStart: number; topicEnd: number; alias: number | null } | null {
  const start = bodyOffset(packet);
  if (start + 2 > packet.length) return null;
  const topicEnd = start + 2 + packet.readUInt16BE(start);
  const qos = (packet[0] >> 1) & 0x03;
  const propertiesAt = topicEnd + (qos > 0 ? 2 : 0);
  const length = readVarint(packet, propertiesAt);
  if (length === null || length.end + length.value > packet.length) return null;
  let at = length.end;
  const end = length.end + length.value;
  while (at < end) {
    const id = packet[at++];
    if (id === TOPIC_ALIAS) return at + 2 <= end ? { topicStart: start, topicEnd, alias: packet.readUInt16BE(at) } : null;
    // The properties a PUBLISH may carry (§3.3.2.3): skip each by its type.
    if (id === 0x01) at += 1;
    else if (id === 0x02) at += 4;
    else if (id === 0x03 || id === 0x08 || id === 0x09) at += 2 + (at + 2 <= end ? packet.readUInt16BE(at) : 0);
    else if (id === 0x26) {
      at += 2 + (at + 2 <= end ? packet.readUInt16BE(at) : 0);
      at += 2 + (at + 2 <= end ? packet.readUInt16BE(at) : 0);
    } else if (id === 0x0b) {
      const varint = readVarint(packet, at);
      if (varint === null) return null;
      at = varint.end;
    } else return null;
  }
  return { topicStart: start, topicEnd, alias: null };
}

/** The same PUBLISH with `topic` in place of its empty topic name, its Topic Alias kept. */
function withTopic(packet: Buffer, topicStart: number, topic: Buffer): Buffer {
  const rest = packet.subarray(topicStart + 2);
  const remaining = 2 + topic.length + rest.length;
  const header = encodeVariableByteInteger(remaining);
  const out = Buffer.allocUnsafe(1 + header.length + remaining);
  out[0] = packet[0];
  out.set(header, 1);
  let at = 1 + header.length;
  out.writeUInt16BE(topic.length, at);
  topic.copy(out, at + 2);
  rest.copy(out, at + 2 + topic.length);
  return out;
}

/**
 * What a broker connection must carry over to the next one so that the
 * device does not notice it was replaced: the device's CONNECT, its messages
 * in flight to the broker, the subscriptions the broker granted it, the
 * broker's deliveries the device has not finished acknowledging, and the
 * topic aliases the device set. Pure: it is told what crosses and answers
 * what to send; the link does the I/O.
 */
export class BrokerSessionKeeper {
  readonly protocolVersion: number;
  readonly clientId: string;
  /** Device packets in flight to the broker by packet identifier, in the order they were sent (a PUBREL replaces its PUBLISH). */
  private readonly inflight = new Map<number, Buffer>();
  private inflightSize = 0;
  /** SUBSCRIBEs in flight: what each asked for, to remember what its SUBACK grants. */
  private readonly subscribing = new Map<number, RememberedSubscription[]>();
  /** Subscriptions the broker granted, by topic filter; a later SUBSCRIBE of the same filter replaces it (MQTT 3.1.1 §3.8.4). */
  private readonly subscriptions = new Map<string, RememberedSubscription>();
  private tooManySubscriptions = false;
  /** SUBSCRIBEs the hub sent to restore a lost session: their SUBACKs are not the device's. */
  private readonly restoring = new Map<number, string>();
  /** The broker's QoS 1/2 deliveries the device has not completed. */
  private readonly deliveries = new Set<number>();
  /** Deliveries of a broker session that was lost: the device's acknowledgements of them belong to no one now. */
  private readonly staleDeliveries = new Set<number>();
  private lastDevicePacketId = 0;
  /** Topic aliases the device set (MQTT 5 §3.3.2.3.4), and those the current broker connection knows. */
  private readonly aliases = new Map<number, Buffer>();
  private readonly aliasesKnown = new Set<number>();

  constructor(readonly connect: Buffer) {
    // The hub admitted this CONNECT only after parsing it.
    const parsed = parseConnect(connect);
    this.protocolVersion = parsed.protocolVersion ?? 4;
    this.clientId = parsed.clientId;
  }

  get inflightBytes(): number {
    return this.inflightSize;
  }

  /** True when the subscriptions the device holds can be sent again on its behalf. */
  get canRestoreSubscriptions(): boolean {
    return !this.tooManySubscriptions;
  }

  /** False for a SUBSCRIBE the hub made to restore a lost session. */
  isDevicePacket(packet: Buffer): boolean {
    return !this.restoring.has(packetIdOf(packet, bodyOffset(packet)));
  }

  /** A device packet about to be written to the broker: records it, and says what actually goes. */
  fromDevice(packet: Buffer): DeviceAction {
    const type = packet[0] >> 4;
    const at = bodyOffset(packet);
    switch (type) {
      case PacketType.PUBLISH: {
        const sent = this.protocolVersion === 5 ? this.resolveAlias(packet) : packet;
        if (((packet[0] >> 1) & 0x03) > 0) {
          const id = packetIdOf(sent, bodyOffset(sent) + 2 + sent.readUInt16BE(bodyOffset(sent)));
          // Kept beyond this call: the caller's buffer is a view of a tunnel read.
          this.track(id, sent === packet ? Buffer.from(packet) : sent);
        }
        return { kind: 'send', packet: sent };
      }
      case PacketType.PUBREL:
        this.track(packetIdOf(packet, at), Buffer.from(packet));
        return { kind: 'send', packet };
      case PacketType.SUBSCRIBE: {
        const id = packetIdOf(packet, at);
        const parsed = parseOne(packet, this.protocolVersion);
        if (parsed?.cmd === 'subscribe') {
          this.subscribing.set(
            id,
            parsed.subscriptions.map((options) => ({ options, properties: parsed.properties })),
          );
        }
        this.track(id, Buffer.from(packet));
        return { kind: 'send', packet };
      }
      case PacketType.UNSUBSCRIBE: {
        const parsed = parseOne(packet, this.protocolVersion);
        if (parsed?.cmd === 'unsubscribe') for (const topic of parsed.unsubscriptions) this.subscriptions.delete(topic);
        this.track(packetIdOf(packet, at), Buffer.from(packet));
        return { kind: 'send', packet };
      }
      case PacketType.PUBACK:
      case PacketType.PUBREC:
      case PacketType.PUBCOMP: {
        const id = packetIdOf(packet, at);
        if (this.staleDeliveries.has(id)) {
          if (type === PacketType.PUBREC) {
            // Completes the device's QoS 2 exchange (MQTT 3.1.1 §4.3.3) for a broker session that no longer exists.
            return { kind: 'answer', packet: Buffer.from([0x62, 0x02, packet[at], packet[at + 1]]) };
          }
          this.staleDeliveries.delete(id);
          return { kind: 'swallow' };
        }
        if (type !== PacketType.PUBREC) this.deliveries.delete(id);
        return { kind: 'send', packet };
      }
      default:
        return { kind: 'send', packet };
    }
  }

  /** A control packet from the broker; false when it answers the hub, not the device. */
  fromBroker(packet: Buffer): boolean {
    const type = packet[0] >> 4;
    const at = bodyOffset(packet);
    const id = packetIdOf(packet, at);
    switch (type) {
      case PacketType.PUBACK:
      case PacketType.PUBCOMP:
      case PacketType.UNSUBACK:
        this.untrack(id);
        return true;
      case PacketType.PUBREC:
        // MQTT 5 §3.5.2.1: a failure code ends the exchange; no PUBREL follows.
        if (this.protocolVersion === 5 && packet.length > at + 2 && packet[at + 2] >= 0x80) this.untrack(id);
        return true;
      case PacketType.SUBACK:
        return this.subscribed(id, packet);
      default:
        return true;
    }
  }

  /** A QoS 1/2 PUBLISH from the broker to the device. */
  brokerPublished(packetId: number): void {
    this.deliveries.add(packetId);
    // A new broker session may reuse an identifier: from now on the device's acknowledgement is for this one.
    this.staleDeliveries.delete(packetId);
  }

  /**
   * What to send after the CONNACK of a new broker connection, before the
   * device's held packets. The broker kept the session (`sessionPresent`):
   * every unacknowledged PUBLISH again with DUP set, and every PUBREL, with
   * their original identifiers (MQTT 3.1.1 §4.4, MQTT 5 §4.4). It did not:
   * the subscriptions first, so that the resent messages' subscribers are
   * in place, then the same packets, which the new session takes as new.
   */
  reconnected(sessionPresent: boolean): Buffer[] {
    const out: Buffer[] = [];
    this.aliasesKnown.clear();
    this.restoring.clear();
    if (!sessionPresent) {
      for (const id of this.deliveries) this.staleDeliveries.add(id);
      this.deliveries.clear();
      for (const [topic, remembered] of this.subscriptions) {
        const id = this.freePacketId();
        this.restoring.set(id, topic);
        const packet: mqttPacket.ISubscribePacket = {
          cmd: 'subscribe',
          messageId: id,
          subscriptions: [{ ...remembered.options, topic }],
        };
        if (this.protocolVersion === 5 && remembered.properties !== undefined) packet.properties = remembered.properties;
        out.push(mqttPacket.generate(packet, { protocolVersion: this.protocolVersion }));
      }
    }
    for (const [id, packet] of [...this.inflight]) {
      if (packet[0] >> 4 === PacketType.PUBLISH) {
        packet[0] |= DUP_FLAG;
        const sent = this.protocolVersion === 5 ? this.resolveAlias(packet) : packet;
        if (sent !== packet) this.track(id, sent);
        out.push(sent);
      } else {
        out.push(packet);
      }
    }
    return out;
  }

  private track(id: number, packet: Buffer): void {
    this.untrack(id);
    this.inflight.set(id, packet);
    this.inflightSize += packet.length;
    this.lastDevicePacketId = id;
  }

  private untrack(id: number): void {
    const previous = this.inflight.get(id);
    if (previous === undefined) return;
    this.inflight.delete(id);
    this.inflightSize -= previous.length;
  }

  private subscribed(id: number, suback: Buffer): boolean {
    const restored = this.restoring.get(id);
    const asked = this.subscribing.get(id);
    const parsed = parseOne(suback, this.protocolVersion);
    const codes = parsed?.cmd === 'suback' ? (parsed.granted as number[]) : [];
    if (restored !== undefined) {
      this.restoring.delete(id);
      // A restored filter the broker now refuses is forgotten; SUBACK was answered long ago, so the device cannot be told.
      if ((codes[0] ?? 0x80) >= 0x80) this.subscriptions.delete(restored);
      return false;
    }
    this.untrack(id);
    this.subscribing.delete(id);
    if (asked === undefined) return true;
    asked.forEach((remembered, index) => {
      const code = codes[index] ?? 0x80;
      if (code >= 0x80) return;
      this.subscriptions.delete(remembered.options.topic);
      this.subscriptions.set(remembered.options.topic, remembered);
    });
    if (this.subscriptions.size > MAX_REMEMBERED_SUBSCRIPTIONS) {
      this.tooManySubscriptions = true;
      this.subscriptions.clear();
    }
    return true;
  }

  /**
   * An identifier the device is not using and is least likely to use soon:
   * clients count identifiers up (MQTT.js, mqtt-packet users), so the ones just
   * below its latest come round last.
   */
  private freePacketId(): number {
    let id = this.lastDevicePacketId;
    for (let tries = 0; tries < 65_535; tries++) {
      id = id <= 1 ? 65_535 : id - 1;
      if (!this.inflight.has(id) && !this.restoring.has(id)) return id;
    }
    return 1;
  }

  /**
   * Topic aliases belong to one network connection (MQTT 5 §3.3.2.3.4): a new
   * broker connection knows none. A PUBLISH that names its topic only by an
   * alias the broker does not know yet gets its topic back, alias kept, so the
   * broker learns the mapping again.
   */
  private resolveAlias(packet: Buffer): Buffer {
    const found = publishTopicAlias(packet);
    if (found === null || found.alias === null) return packet;
    if (found.topicEnd > found.topicStart + 2) {
      this.aliases.set(found.alias, Buffer.from(packet.subarray(found.topicStart + 2, found.topicEnd)));
      this.aliasesKnown.add(found.alias);
      return packet;
    }
    if (this.aliasesKnown.has(found.alias)) return packet;
    const topic = this.aliases.get(found.alias);
    if (topic === undefined) return packet;
    this.aliasesKnown.add(found.alias);
    return withTopic(packet, found.topicStart, topic);
  }
}
