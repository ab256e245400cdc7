import { EdgemuxError } from './errors.js';
import { UnitSplitter } from './unit-splitter.js';

/** MQTT control packet types (MQTT 3.1.1 §2.2.1, MQTT 5 §2.1.2). */
export const PacketType = {
  CONNECT: 1,
  CONNACK: 2,
  PUBLISH: 3,
  PUBACK: 4,
  PUBREC: 5,
  PUBREL: 6,
  PUBCOMP: 7,
  SUBSCRIBE: 8,
  SUBACK: 9,
  UNSUBSCRIBE: 10,
  UNSUBACK: 11,
  PINGREQ: 12,
  PINGRESP: 13,
  DISCONNECT: 14,
  AUTH: 15,
} as const;

export const PINGREQ_BYTES: Buffer = Buffer.from([0xc0, 0x00]);
export const PINGRESP_BYTES: Buffer = Buffer.from([0xd0, 0x00]);

/** Largest remaining length MQTT can express in four bytes (§2.2.3). */
export const MAX_REMAINING_LENGTH = 268_435_455;

export function packetTypeOf(packet: Buffer): number {
  return packet[0] >> 4;
}

/**
 * Reads a fixed header at `offset`. Returns the whole packet's size in bytes,
 * or -1 when the header is not complete yet. Throws on a remaining length
 * that runs past four bytes (§2.2.3) or a packet over `maxPacketSize`.
 */
export function wholePacketSize(buf: Buffer, offset: number, maxPacketSize: number): number {
  if (offset >= buf.length) return -1;
  if (buf[offset] >> 4 === 0) {
    throw new EdgemuxError('E_MQTT_BAD_PACKET_TYPE', 'packet type 0 is reserved');
  }
  let remaining = 0;
  let multiplier = 1;
  for (let i = 1; i <= 4; i++) {
    const at = offset + i;
    if (at >= buf.length) return -1;
    const byte = buf[at];
    remaining += (byte & 0x7f) * multiplier;
    if ((byte & 0x80) === 0) {
      const size = 1 + i + remaining;
      if (size > maxPacketSize) {
        throw new EdgemuxError(
          'E_MQTT_PACKET_TOO_LARGE',
          `packet of ${size} bytes exceeds the maximum of ${maxPacketSize}`,
        );
      }
      return size;
    }
    multiplier *= 128;
  }
  throw new EdgemuxError('E_MQTT_BAD_REMAINING_LENGTH', 'remaining length runs past four bytes');
}

/**
 * Splits a byte stream into whole MQTT packets without parsing payloads.
 * Packets inside one chunk are handed out as views of that chunk; only a
 * packet that straddles chunks is copied, once, into a buffer of its size.
 */
export class MqttFramer extends UnitSplitter {
  constructor(private readonly maxPacketSize: number) {
    super();
  }

  /** Bytes held for a packet that has not fully arrived. */
  get buffered(): number {
    return this.pendingBytes;
  }

  push(chunk: Buffer, onPacket: (packet: Buffer) => void): void {
    this.split(chunk, (buf, start, end) => onPacket(start === 0 && end === buf.length ? buf : buf.subarray(start, end)));
  }

  protected sizeAt(buf: Buffer, offset: number): number {
    return wholePacketSize(buf, offset, this.maxPacketSize);
  }
}

/**
 * Follows packet boundaries in a byte stream that someone else parses, and
 * throws as soon as a fixed header announces a packet over `maxPacketSize`
 * (or a remaining length past four bytes, §2.2.3). It holds no bytes: bodies
 * are only counted, so a peer that announces 250 MiB is caught at its header,
 * before anything downstream starts buffering the body.
 */
export class PacketSizeGauge {
  /** Body bytes of the current packet still to come. */
  private bodyLeft = 0;
  /** Header bytes of the next packet seen so far; 0 at a packet boundary. */
  private headerBytes = 0;
  private remaining = 0;
  private multiplier = 1;

  constructor(private readonly maxPacketSize: number) {}

  check(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.bodyLeft > 0) {
        const skip = Math.min(this.bodyLeft, chunk.length - at);
        this.bodyLeft -= skip;
        at += skip;
        continue;
      }
      const byte = chunk[at++];
      if (this.headerBytes === 0) {
        this.headerBytes = 1;
        this.remaining = 0;
        this.multiplier = 1;
        continue;
      }
      this.headerBytes++;
      this.remaining += (byte & 0x7f) * this.multiplier;
      if ((byte & 0x80) === 0) {
        const size = this.headerBytes + this.remaining;
        if (size > this.maxPacketSize) {
          throw new EdgemuxError('E_MQTT_PACKET_TOO_LARGE', `packet of ${size} bytes exceeds the maximum of ${this.maxPacketSize}`);
        }
        this.bodyLeft = this.remaining;
        this.headerBytes = 0;
        continue;
      }
      if (this.headerBytes === 5) {
        throw new EdgemuxError('E_MQTT_BAD_REMAINING_LENGTH', 'remaining length runs past four bytes');
      }
      this.multiplier *= 128;
    }
  }
}

/**
 * Checks one DATA payload of a device stream against docs/protocol.md
 * section 6 by its fixed headers only: whole packets, a CONNECT first in the
 * stream (`first`) and never again. The broker acts on the CONNECT it reads,
 * so a CONNECT the hub has not checked must never reach it. Returns why the
 * payload breaks the rules, or null.
 */
export function streamPayloadProblem(payload: Buffer, first: boolean, maxPacketSize: number): string | null {
  let offset = 0;
  while (offset < payload.length) {
    let size: number;
    try {
      size = wholePacketSize(payload, offset, maxPacketSize);
    } catch (err) {
      return (err as Error).message;
    }
    if (size < 0 || offset + size > payload.length) return 'DATA payload ends inside an MQTT packet';
    const isConnect = payload[offset] >> 4 === PacketType.CONNECT;
    if (first && offset === 0 && !isConnect) return 'first packet of the stream is not CONNECT';
    if (isConnect && !(first && offset === 0)) return 'CONNECT after the first packet of the stream';
    offset += size;
  }
  return null;
}

/** MQTT's Variable Byte Integer (3.1.1 §2.2.3, 5.0 §1.5.5): 7 bits a byte, high bit set while more follow. */
export function encodeVariableByteInteger(value: number): Buffer {
  const bytes: number[] = [];
  do {
    let byte = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) byte |= 0x80;
    bytes.push(byte);
  } while (value > 0);
  return Buffer.from(bytes);
}
