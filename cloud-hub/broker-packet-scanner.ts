import { EdgemuxError } from '../shared/errors.js';
import { PacketType } from '../shared/mqtt-framing.js';

/**
 * Largest non-PUBLISH packet collected whole for inspection. Acknowledgements
 * and CONNACKs are a few bytes; a larger one (a SUBACK with a long reason
 * string or user properties) passes through uninspected, so no broker can make
 * the hub buffer more than this per device.
 */
export const MAX_INSPECTED_PACKET = 64 * 1024;

export interface ScannerSink {
  /** Bytes to pass on to the device unchanged: views of the pushed chunk, or copies of headers that straddled chunks. */
  forward(bytes: Buffer): void;
  /** A whole non-PUBLISH packet; return false to swallow it. */
  control(packet: Buffer): boolean;
  /** A PUBLISH of QoS 1 or 2 with its packet identifier, reported once its identifier has passed. */
  publish(qos: number, packetId: number): void;
}

type Phase = 'header' | 'collect' | 'publish' | 'pass';

/**
 * Walks what a broker writes for one device, packet by packet, without
 * buffering PUBLISH payloads: PUBLISH bytes are forwarded as they arrive
 * (only the packet identifier is picked out), while the small control packets
 * are collected whole so that the link can act on them (CONNACK, the
 * acknowledgements of the device's in-flight messages, SUBACKs) or swallow
 * those it caused itself. Pure: no sockets, no timers.
 */
export class BrokerPacketScanner {
  private phase: Phase = 'header';
  private readonly header = Buffer.alloc(5);
  private headerCount = 0;
  /** Body bytes of the current packet still to come. */
  private left = 0;
  private collected: Buffer | null = null;
  private collectedLength = 0;
  /** PUBLISH variable header: bytes of it seen, its topic length, and the packet identifier as it is read. */
  private publishQos = 0;
  private publishSeen = 0;
  private topicLength = 0;
  private packetId = 0;

  push(chunk: Buffer, sink: ScannerSink): void {
    let at = 0;
    // Start of the run of bytes that will be forwarded as one view.
    let runStart = 0;
    const flushRun = (end: number): void => {
      if (end > runStart) sink.forward(chunk.subarray(runStart, end));
      runStart = end;
    };
    while (at < chunk.length) {
      if (this.phase === 'header') {
        const headerStart = at;
        let complete = false;
        while (at < chunk.length && !complete) {
          const byte = chunk[at++];
          this.header[this.headerCount++] = byte;
          if (this.headerCount === 1) continue;
          if ((byte & 0x80) === 0) complete = true;
          else if (this.headerCount === 5) throw new EdgemuxError('E_MQTT_BAD_REMAINING_LENGTH', 'remaining length runs past four bytes');
        }
        if (!complete) {
          // Held in `header` until the rest arrives; forwarded then as a copy.
          flushRun(headerStart);
          runStart = chunk.length;
          return;
        }
        const headerLength = this.headerCount;
        const straddled = at - headerStart < headerLength;
        this.headerCount = 0;
        this.left = remainingLength(this.header, headerLength);
        const type = this.header[0] >> 4;
        if (type === PacketType.PUBLISH || headerLength + this.left > MAX_INSPECTED_PACKET) {
          if (straddled) {
            flushRun(headerStart);
            sink.forward(Buffer.from(this.header.subarray(0, headerLength)));
            runStart = at;
          }
          this.phase = type === PacketType.PUBLISH ? 'publish' : 'pass';
          this.publishQos = (this.header[0] >> 1) & 0x03;
          this.publishSeen = 0;
          this.topicLength = 0;
          this.packetId = 0;
          if (this.left === 0) this.phase = 'header';
          continue;
        }
        flushRun(headerStart);
        runStart = at;
        this.collected = Buffer.allocUnsafe(headerLength + this.left);
        this.header.copy(this.collected, 0, 0, headerLength);
        this.collectedLength = headerLength;
        this.phase = 'collect';
        if (this.left === 0) this.finishCollected(sink);
        continue;
      }
      if (this.phase === 'collect') {
        const take = Math.min(this.left, chunk.length - at);
        chunk.copy(this.collected!, this.collectedLength, at, at + take);
        this.collectedLength += take;
        this.left -= take;
        at += take;
        runStart = at;
        if (this.left === 0) this.finishCollected(sink);
        continue;
      }
      if (this.phase === 'publish' && this.publishQos > 0) {
        // Read the topic length and the packet identifier after the topic (MQTT 3.1.1 §3.3.2), skipping the topic itself.
        while (at < chunk.length && this.left > 0 && this.publishSeen < 2 + this.topicLength + 2) {
          if (this.publishSeen < 2) {
            this.topicLength = (this.topicLength << 8) | chunk[at];
          } else if (this.publishSeen >= 2 + this.topicLength) {
            this.packetId = (this.packetId << 8) | chunk[at];
          } else {
            const skip = Math.min(2 + this.topicLength - this.publishSeen, chunk.length - at, this.left);
            at += skip;
            this.left -= skip;
            this.publishSeen += skip;
            continue;
          }
          at++;
          this.left--;
          this.publishSeen++;
          if (this.publishSeen === 2 + this.topicLength + 2) sink.publish(this.publishQos, this.packetId);
        }
      }
      const take = Math.min(this.left, chunk.length - at);
      at += take;
      this.left -= take;
      if (this.left === 0) this.phase = 'header';
    }
    flushRun(chunk.length);
  }

  private finishCollected(sink: ScannerSink): void {
    const packet = this.collected!;
    this.collected = null;
    this.phase = 'header';
    if (sink.control(packet)) sink.forward(packet);
  }
}

function remainingLength(header: Buffer, headerLength: number): number {
  let value = 0;
  let multiplier = 1;
  for (let i = 1; i < headerLength; i++) {
    value += (header[i] & 0x7f) * multiplier;
    multiplier *= 128;
  }
  return value;
}
