import { isUtf8 } from 'node:buffer';
import { PacketType } from './mqtt-framing.js';

/**
 * MQTT 3.1.1 §1.5.3 and MQTT 5 §1.5.4: a UTF-8 encoded string must be
 * well-formed (no overlong forms, no encoded surrogates U+D800..U+DFFF) and
 * must not contain U+0000; a receiver closes the connection otherwise.
 * Decoding with replacement instead would turn distinct byte strings into
 * one string (`dev-\xFF` and `dev-\xFE` both become `dev-\uFFFD`).
 *
 * Most strings on the wire are ASCII, so they are checked in a plain loop
 * and only the others pay for the native validator.
 */
export function isMqttString(buf: Buffer, start = 0, end = buf.length): boolean {
  for (let i = start; i < end; i++) {
    const byte = buf[i];
    if (byte === 0) return false;
    if (byte >= 0x80) {
      const rest = buf.subarray(i, end);
      return rest.indexOf(0) === -1 && isUtf8(rest);
    }
  }
  return true;
}

/** Offset just past the fixed header of a whole packet (type byte and remaining length, §2.2.3). */
function bodyOffset(packet: Buffer): number {
  let offset = 1;
  while (offset < 5 && (packet[offset] & 0x80) !== 0) offset++;
  return offset + 1;
}

/** Skips an MQTT 5 property block (§2.2.2) at `offset`. */
function skipProperties(packet: Buffer, offset: number): number {
  let length = 0;
  let multiplier = 1;
  let byte: number;
  do {
    byte = packet[offset++];
    length += (byte & 0x7f) * multiplier;
    multiplier *= 128;
  } while ((byte & 0x80) !== 0 && offset < packet.length);
  return offset + length;
}

/**
 * Why a device's PUBLISH topic name, or a SUBSCRIBE or UNSUBSCRIBE topic
 * filter, is not a valid MQTT string; null when all are. Only the strings
 * are looked at: a packet whose lengths do not add up is left for the
 * broker to refuse as malformed. A PUBLISH costs a loop over its topic.
 */
export function topicProblem(packet: Buffer, type: number, protocolVersion: number): string | null {
  let offset = bodyOffset(packet);
  if (type === PacketType.PUBLISH) {
    if (offset + 2 > packet.length) return null;
    const end = offset + 2 + packet.readUInt16BE(offset);
    return end <= packet.length && !isMqttString(packet, offset + 2, end) ? 'PUBLISH topic is not well-formed UTF-8 or contains U+0000 (MQTT 3.1.1 §1.5.3)' : null;
  }
  offset += 2;
  if (protocolVersion === 5) offset = skipProperties(packet, offset);
  while (offset + 2 <= packet.length) {
    const end = offset + 2 + packet.readUInt16BE(offset);
    if (end > packet.length) return null;
    if (!isMqttString(packet, offset + 2, end)) return 'topic filter is not well-formed UTF-8 or contains U+0000 (MQTT 3.1.1 §1.5.3)';
    // SUBSCRIBE follows each filter with its options byte.
    offset = type === PacketType.SUBSCRIBE ? end + 1 : end;
  }
  return null;
}
