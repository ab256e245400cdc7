import { EdgemuxError } from '../shared/errors.js';
import { MAX_REMAINING_LENGTH, MqttFramer, PacketType } from '../shared/mqtt-framing.js';

/**
 * Enough of a PUBLISH to answer for it: fixed header (at most 5 bytes), topic
 * length and topic (at most 2 + 65 535), packet identifier (2).
 */
const HEAD_LIMIT = 5 + 2 + 65_535 + 2;

/** What is known of a packet too large to deliver: its first bytes and its full size. */
export interface OversizedPacket {
  /** The fixed header and the start of the variable header, at most HEAD_LIMIT bytes. */
  head: Buffer;
  size: number;
}

/**
 * Splits what a broker writes for one device into whole packets, as
 * MqttFramer does, but a packet over `maxPacketSize` does not end the stream:
 * only its head is kept, for `onOversized` to answer it, and the rest is
 * skipped as it arrives. One such message must cost its receivers that
 * message, not their sessions, and the hub must not buffer it whole to find
 * out.
 */
export class DeliveryFramer {
  private readonly framer: MqttFramer;
  /** Fixed header bytes of the next packet, when its header straddles chunks. */
  private readonly header = Buffer.alloc(5);
  private headerCount = 0;
  /** Body bytes of the current packet still to come, when they are followed here (see `oversized`). */
  private bodyLeft = 0;
  /** The oversized packet being skipped, with its head as collected so far. */
  private oversized: { head: Buffer; headLength: number; size: number } | null = null;
  /** While normal packets pass, their headers are not followed here: MqttFramer does. */
  private passingLeft = 0;

  constructor(private readonly maxPacketSize: number) {
    // Only packets this class let through reach it, so its limit never trips.
    this.framer = new MqttFramer(MAX_REMAINING_LENGTH + 5);
  }

  push(chunk: Buffer, onPacket: (packet: Buffer) => void, onOversized: (packet: OversizedPacket) => void): void {
    let at = 0;
    let runStart = 0;
    const flushRun = (end: number): void => {
      if (end > runStart) this.framer.push(chunk.subarray(runStart, end), onPacket);
    };
    while (at < chunk.length) {
      if (this.passingLeft > 0) {
        const take = Math.min(this.passingLeft, chunk.length - at);
        this.passingLeft -= take;
        at += take;
        continue;
      }
      if (this.oversized !== null) {
        const take = Math.min(this.bodyLeft, chunk.length - at);
        const skipped = this.oversized;
        const room = skipped.head.length - skipped.headLength;
        if (room > 0) {
          chunk.copy(skipped.head, skipped.headLength, at, at + Math.min(room, take));
          skipped.headLength += Math.min(room, take);
        }
        this.bodyLeft -= take;
        at += take;
        runStart = at;
        if (this.bodyLeft === 0) {
          this.oversized = null;
          onOversized({ head: skipped.head, size: skipped.size });
        }
        continue;
      }
      // At a packet boundary: read its fixed header.
      const headerStart = at;
      const pending = this.headerCount;
      let remaining = 0;
      let multiplier = 1;
      let headerLength = 0;
      for (let i = 1; i < pending; i++) {
        remaining += (this.header[i] & 0x7f) * multiplier;
        multiplier *= 128;
      }
      let complete = false;
      let index = pending;
      while (at < chunk.length) {
        const byte = chunk[at++];
        this.header[this.headerCount++] = byte;
        if (index > 0) {
          remaining += (byte & 0x7f) * multiplier;
          multiplier *= 128;
          if ((byte & 0x80) === 0) {
            complete = true;
            headerLength = index + 1;
            break;
          }
          if (index === 4) throw new EdgemuxError('E_MQTT_BAD_REMAINING_LENGTH', 'remaining length runs past four bytes');
        }
        index++;
      }
      if (!complete) {
        // The header continues in the next chunk; what came before it goes on now.
        flushRun(headerStart);
        runStart = chunk.length;
        return;
      }
      const size = headerLength + remaining;
      this.headerCount = 0;
      if (size <= this.maxPacketSize) {
        // Its first header bytes came in an earlier chunk: they go first.
        if (pending > 0) this.framer.push(Buffer.from(this.header.subarray(0, pending)), onPacket);
        this.passingLeft = remaining;
        continue;
      }
      flushRun(headerStart);
      const head = Buffer.allocUnsafe(Math.min(size, HEAD_LIMIT));
      this.header.copy(head, 0, 0, headerLength);
      this.oversized = { head, headLength: headerLength, size };
      this.bodyLeft = remaining;
      runStart = at;
    }
    flushRun(chunk.length);
  }
}

/** Topic, QoS and packet identifier of a PUBLISH head; null for any other packet or a head too short to tell. */
export function publishSummary(head: Buffer): { topic: string; qos: number; messageId: number | null } | null {
  if (head[0] >> 4 !== PacketType.PUBLISH) return null;
  let offset = 1;
  while (offset < 5 && (head[offset] & 0x80) !== 0) offset++;
  offset++;
  if (offset + 2 > head.length) return null;
  const topicEnd = offset + 2 + head.readUInt16BE(offset);
  if (topicEnd > head.length) return null;
  const topic = head.toString('utf8', offset + 2, topicEnd);
  const qos = (head[0] >> 1) & 0x03;
  if (qos === 0) return { topic, qos, messageId: null };
  if (topicEnd + 2 > head.length) return null;
  return { topic, qos, messageId: head.readUInt16BE(topicEnd) };
}
