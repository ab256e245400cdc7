import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { decodeFrames, encodeFrame, type Frame, FrameType } from '../../shared/frame-codec.js';

const doc = readFileSync(join(import.meta.dirname, '../../docs/protocol.md'), 'utf8');

interface Example {
  /** Line of the opening fence, 1-based, for the failure message. */
  line: number;
  bytes: Buffer;
  /** The frame the doc says the block holds, as written in its marker; null when the block has none. */
  marker: Record<string, unknown> | null;
}

const MARKER = /^<!-- frame: (.*) -->$/;
const HEX_TOKEN = /^(?:[0-9a-f]{2})+$/;

/** A line's bytes: its leading hex tokens, up to the first word of annotation. */
function lineBytes(line: string): string {
  const tokens = line.trim().split(/\s+/);
  const hex: string[] = [];
  for (const token of tokens) {
    if (!HEX_TOKEN.test(token)) break;
    hex.push(token);
  }
  return hex.join('');
}

/** Every fenced block that opens with a hex byte: the doc's wire examples. */
function hexExamples(): Example[] {
  const lines = doc.split('\n');
  const examples: Example[] = [];
  const isFence = (line: string): boolean => line.trim().startsWith('```');
  for (let i = 0; i < lines.length; i++) {
    if (!isFence(lines[i])) continue;
    const end = lines.findIndex((line, at) => at > i && isFence(line));
    if (end < 0) throw new Error(`docs/protocol.md: the code block opened on line ${i + 1} is never closed`);
    const body = lines.slice(i + 1, end);
    if (body.length > 0 && HEX_TOKEN.test(body[0].trim().split(/\s+/)[0])) {
      const marked = MARKER.exec(lines[i - 1] ?? '');
      examples.push({
        line: i + 1,
        bytes: Buffer.from(body.map(lineBytes).join(''), 'hex'),
        marker: marked === null ? null : (JSON.parse(marked[1]) as Record<string, unknown>),
      });
    }
    i = end;
  }
  return examples;
}

/** The marker's JSON as the codec's frame value. */
function frameOf(marker: Record<string, unknown>): Frame {
  const type = FrameType[marker.type as keyof typeof FrameType];
  const streamId = marker.streamId as number;
  if (type === FrameType.DATA) return { type, streamId, payload: Buffer.from(marker.payload as string, 'hex') };
  if (type === FrameType.ACK) return { type, streamId, consumed: marker.consumed as number };
  return { type, streamId, body: marker.body } as Frame;
}

function parseMqtt(bytes: Buffer): Packet[] {
  const packets: Packet[] = [];
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  parser.on('packet', (packet) => packets.push(packet));
  parser.on('error', (err) => {
    throw err;
  });
  parser.parse(bytes);
  return packets;
}

const examples = hexExamples();

describe('hex examples of docs/protocol.md', () => {
  it('finds the examples, each marked with the frame it holds', () => {
    // Section 14 holds at least this many; fewer means the parser lost track of the doc.
    expect(examples.length).toBeGreaterThanOrEqual(14);
    expect(examples.filter((example) => example.marker === null).map((example) => `line ${example.line}`)).toEqual([]);
  });

  it.each(examples.filter((example) => example.marker !== null).map((example) => [`line ${example.line}: ${String(example.marker!.type)}`, example] as const))(
    '%s decodes to the stated frame and encodes back byte for byte',
    (_name, example) => {
      const frame = frameOf(example.marker!);
      expect(frame.type, 'a frame type the codec knows').toBeTypeOf('number');
      expect(decodeFrames(example.bytes, 1024 * 1024)).toEqual([frame]);
      expect(encodeFrame(frame).toString('hex')).toBe(example.bytes.toString('hex'));
      const mqtt = example.marker!.mqtt as Record<string, unknown> | undefined;
      if (mqtt !== undefined && frame.type === FrameType.DATA) {
        const packets = parseMqtt(frame.payload);
        expect(packets).toHaveLength(1);
        const packet = packets[0] as Packet & { payload?: Buffer };
        expect({ ...packet, payload: packet.payload?.toString() }).toMatchObject(mqtt);
      }
    },
  );
});
