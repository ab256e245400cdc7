import fc from 'fast-check';
import mqttPacket from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { DeliveryFramer, publishSummary } from '../../cloud-hub/delivery-framer.js';

const LIMIT = 300;

function publish(topic: string, payloadBytes: number, qos: 0 | 1 | 2, messageId: number): Buffer {
  return mqttPacket.generate({ cmd: 'publish', topic, payload: Buffer.alloc(payloadBytes, 7), qos, messageId, retain: false, dup: false });
}

function splitAt(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = cuts.map((cut) => cut % (bytes.length + 1)).sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let start = 0;
  for (const point of points) {
    chunks.push(bytes.subarray(start, point));
    start = point;
  }
  chunks.push(bytes.subarray(start));
  return chunks;
}

const packetSpec = fc.record({
  topic: fc.stringMatching(/^[a-z/]{1,20}$/),
  // Up to 200 KiB: some cross the limit by far, and their length takes three bytes.
  payload: fc.oneof(fc.integer({ min: 0, max: 400 }), fc.integer({ min: 16_000, max: 200_000 })),
  qos: fc.constantFrom(0 as const, 1 as const, 2 as const),
  messageId: fc.integer({ min: 1, max: 0xffff }),
});

describe('DeliveryFramer', () => {
  it('passes packets within the limit whole and reports each larger one once, by its head, however the bytes are cut', () => {
    fc.assert(
      fc.property(fc.array(packetSpec, { minLength: 1, maxLength: 8 }), fc.array(fc.nat(), { maxLength: 12 }), (specs, cuts) => {
        const packets = specs.map((spec) => publish(spec.topic, spec.payload, spec.qos, spec.messageId));
        const framer = new DeliveryFramer(LIMIT);
        const passed: Buffer[] = [];
        const oversized: { topic: string; qos: number; messageId: number | null; size: number; headBytes: number }[] = [];
        for (const chunk of splitAt(Buffer.concat(packets), cuts)) {
          framer.push(
            chunk,
            (packet) => passed.push(Buffer.from(packet)),
            ({ head, size }) => oversized.push({ ...publishSummary(head)!, size, headBytes: head.length }),
          );
        }
        expect(passed).toEqual(packets.filter((packet) => packet.length <= LIMIT));
        expect(oversized).toEqual(
          specs
            .map((spec, i) => ({ spec, size: packets[i].length }))
            .filter(({ size }) => size > LIMIT)
            .map(({ spec, size }) => ({
              topic: spec.topic,
              qos: spec.qos,
              messageId: spec.qos === 0 ? null : spec.messageId,
              size,
              headBytes: Math.min(size, 5 + 2 + 65_535 + 2),
            })),
        );
      }),
      { numRuns: 300 },
    );
  });

  it('refuses a remaining length that runs past four bytes', () => {
    const framer = new DeliveryFramer(LIMIT);
    expect(() => framer.push(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]), () => {}, () => {})).toThrow(/four bytes/);
  });
});
