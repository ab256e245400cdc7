import { Packr } from 'msgpackr';
import { EdgemuxError } from './errors.js';
import { UnitSplitter } from './unit-splitter.js';

/**
 * Tunnel wire format (docs/protocol.md). Every frame starts with a 9-byte
 * header: type (u8), stream id (u32 BE), payload length (u32 BE).
 * DATA payloads are raw MQTT bytes; ACK payloads are an 8-byte offset;
 * control payloads are msgpack maps.
 */
export const FrameType = {
  DATA: 0,
  ACK: 1,
  HELLO: 2,
  OPEN: 3,
  ACCEPT: 4,
  RESUME: 5,
  CLOSE: 6,
  PING: 7,
  PONG: 8,
  GOODBYE: 9,
} as const;
export type FrameTypeCode = (typeof FrameType)[keyof typeof FrameType];

export const FRAME_HEADER_SIZE = 9;
export const ACK_PAYLOAD_SIZE = 8;
export const PROTOCOL_VERSION = 1;
const TWO_POW_32 = 0x1_0000_0000;

export interface HelloBody {
  version: number;
  role: 'agent' | 'hub';
  id: string;
  /** Interval at which the sender pings; the peer declares it dead after 3 missed. */
  heartbeatMs: number;
  /** Credit window the sender grants each new stream until OPEN/ACCEPT says otherwise. */
  streamWindow: number;
  /** Largest frame payload the sender accepts; the peer never sends a larger one. */
  maxFramePayload: number;
  /**
   * Which worker process of the agent this is (0 when it runs one). Workers
   * share the agent's certificate and each holds its own streams.
   */
  worker?: number;
  /**
   * Random per process start. Streams resume only within one instance: a
   * hub seeing a new agent instance ends the sessions of the old one at once.
   */
  instance: string;
  /**
   * Features the sender supports within its major version (shared/hello.ts).
   * Absent in HELLOs from peers that predate the list.
   */
  capabilities?: string[];
}

export interface OpenBody {
  clientId: string;
  /** Bytes the opener is prepared to receive before it acknowledges (its credit window). */
  window: number;
  keepalive: number;
  protocolVersion: number;
  cleanSession: boolean;
  username?: string;
}

export interface AcceptBody {
  window: number;
  /** Bytes of this stream the sender has received (used by RESUME). */
  received: number;
}

export interface ResumeBody {
  clientId: string;
  window: number;
  received: number;
  /**
   * Counts the agent's resume attempts for this stream, from 1. A RESUME that
   * arrives after a later one (over a tunnel the agent already gave up on) is
   * stale and ignored.
   */
  attempt: number;
}

export interface CloseBody {
  /**
   * Why the stream ended, one of the end codes of docs/errors.md. Optional
   * on the wire: peers from before codes send none, and a receiver takes a
   * code it does not know as `unspecified`.
   */
  code?: string;
  /** Human-readable detail, for logs only. */
  reason: string;
  /** True when the stream ends without an MQTT DISCONNECT: the broker publishes the will. */
  abrupt: boolean;
}

export interface PingBody {
  sentAt: number;
}

/**
 * Why a side says goodbye, the last frame it writes on a tunnel (protocol 10.1).
 * `shutdown`: its process is stopping gracefully. `unsupported-version`: a side
 * refuses a HELLO of another major version; only the tunnel ends. The others
 * are sent by the hub only, in place of its HELLO to refuse a tunnel, or on a
 * ready tunnel to end it: `identity-in-use`, another instance of the agent holds
 * live tunnels; `revoked`, the agent's certificate was revoked;
 * `certificate-refused`, its certificate failed a check, which `problem` names.
 * A receiver takes a code it does not know as `shutdown` on a ready tunnel, as a
 * refusal before HELLO.
 */
export type GoodbyeCode = 'shutdown' | 'identity-in-use' | 'unsupported-version' | 'revoked' | 'certificate-refused';

export interface GoodbyeBody {
  code: GoodbyeCode | (string & {});
  /** Human-readable detail, for logs and health. */
  reason: string;
  /**
   * With `certificate-refused`, the failed check: unknown-ca, expired,
   * not-yet-valid, no-certificate, no-common-name, invalid (shared/tls-failure.ts).
   */
  problem?: string;
}

export type ControlFrame =
  | { type: typeof FrameType.HELLO; streamId: number; body: HelloBody }
  | { type: typeof FrameType.OPEN; streamId: number; body: OpenBody }
  | { type: typeof FrameType.ACCEPT; streamId: number; body: AcceptBody }
  | { type: typeof FrameType.RESUME; streamId: number; body: ResumeBody }
  | { type: typeof FrameType.CLOSE; streamId: number; body: CloseBody }
  | { type: typeof FrameType.PING; streamId: number; body: PingBody }
  | { type: typeof FrameType.PONG; streamId: number; body: PingBody }
  | { type: typeof FrameType.GOODBYE; streamId: number; body: GoodbyeBody };

export type Frame =
  | { type: typeof FrameType.DATA; streamId: number; payload: Buffer }
  | { type: typeof FrameType.ACK; streamId: number; consumed: number }
  | ControlFrame;

/** Receives decoded frames; DATA and ACK come as arguments so the hot path allocates nothing. */
export interface FrameHandler {
  data(streamId: number, payload: Buffer): void;
  ack(streamId: number, consumed: number): void;
  control(frame: ControlFrame): void;
}

// Other msgpack implementations send integers >= 2^32 as uint 64; they decode as numbers here.
const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'number' });

export function writeFrameHeader(target: Buffer, offset: number, type: number, streamId: number, length: number): void {
  target[offset] = type;
  target.writeUInt32BE(streamId >>> 0, offset + 1);
  target.writeUInt32BE(length >>> 0, offset + 5);
}

export function writeAckFrame(target: Buffer, offset: number, streamId: number, consumed: number): void {
  writeFrameHeader(target, offset, FrameType.ACK, streamId, ACK_PAYLOAD_SIZE);
  target.writeUInt32BE(Math.floor(consumed / TWO_POW_32), offset + FRAME_HEADER_SIZE);
  target.writeUInt32BE(consumed >>> 0, offset + FRAME_HEADER_SIZE + 4);
}

export function encodeControlFrame(frame: ControlFrame): Buffer {
  const body: Buffer = packr.pack(frame.body);
  const out = Buffer.allocUnsafe(FRAME_HEADER_SIZE + body.length);
  writeFrameHeader(out, 0, frame.type, frame.streamId, body.length);
  body.copy(out, FRAME_HEADER_SIZE);
  return out;
}

/** Whole-frame encoder for any frame; the data path writes headers in place instead. */
export function encodeFrame(frame: Frame): Buffer {
  if (frame.type === FrameType.DATA) {
    const out = Buffer.allocUnsafe(FRAME_HEADER_SIZE + frame.payload.length);
    writeFrameHeader(out, 0, FrameType.DATA, frame.streamId, frame.payload.length);
    frame.payload.copy(out, FRAME_HEADER_SIZE);
    return out;
  }
  if (frame.type === FrameType.ACK) {
    const out = Buffer.allocUnsafe(FRAME_HEADER_SIZE + ACK_PAYLOAD_SIZE);
    writeAckFrame(out, 0, frame.streamId, frame.consumed);
    return out;
  }
  return encodeControlFrame(frame);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isStringList(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((entry) => typeof entry === 'string');
}

/** 'count' is a non-negative safe integer: windows, offsets and intervals are never NaN, negative or fractional. */
type FieldKind = 'string' | 'number' | 'boolean' | 'count';

function fieldMatches(value: unknown, kind: FieldKind): boolean {
  if (kind === 'count') return Number.isSafeInteger(value) && (value as number) >= 0;
  if (kind === 'number') return typeof value === 'number' && Number.isFinite(value);
  return typeof value === kind;
}

function requireFields(type: number, body: Record<string, unknown>, fields: Record<string, FieldKind>): void {
  for (const [name, kind] of Object.entries(fields)) {
    if (!fieldMatches(body[name], kind)) {
      throw new EdgemuxError('E_FRAME_MALFORMED', `control frame type ${type}: field ${name} must be a ${kind}`);
    }
  }
}

const CONTROL_FIELDS: Record<number, Record<string, FieldKind>> = {
  [FrameType.HELLO]: { version: 'count', role: 'string', id: 'string', heartbeatMs: 'count', streamWindow: 'count', maxFramePayload: 'count', instance: 'string' },
  [FrameType.OPEN]: { clientId: 'string', window: 'count', keepalive: 'count', protocolVersion: 'count', cleanSession: 'boolean' },
  [FrameType.ACCEPT]: { window: 'count', received: 'count' },
  [FrameType.RESUME]: { clientId: 'string', window: 'count', received: 'count', attempt: 'count' },
  [FrameType.CLOSE]: { reason: 'string', abrupt: 'boolean' },
  [FrameType.PING]: { sentAt: 'number' },
  [FrameType.PONG]: { sentAt: 'number' },
  [FrameType.GOODBYE]: { code: 'string', reason: 'string' },
};

export function decodeControlBody(type: number, streamId: number, payload: Buffer): ControlFrame {
  const fields = CONTROL_FIELDS[type];
  if (fields === undefined) {
    throw new EdgemuxError('E_FRAME_BAD_TYPE', `unknown frame type ${type}`);
  }
  let body: unknown;
  try {
    body = packr.unpack(payload);
  } catch (err) {
    throw new EdgemuxError('E_FRAME_MALFORMED', `control frame type ${type}: payload is not msgpack`, { cause: err });
  }
  if (!isRecord(body)) {
    throw new EdgemuxError('E_FRAME_MALFORMED', `control frame type ${type}: payload is not a map`);
  }
  requireFields(type, body, fields);
  if (type === FrameType.HELLO && body.role !== 'agent' && body.role !== 'hub') {
    throw new EdgemuxError('E_FRAME_MALFORMED', `HELLO: role must be agent or hub`);
  }
  if (type === FrameType.HELLO && body.worker !== undefined && !fieldMatches(body.worker, 'count')) {
    throw new EdgemuxError('E_FRAME_MALFORMED', `HELLO: worker must be a non-negative integer`);
  }
  if (type === FrameType.GOODBYE && body.problem !== undefined && typeof body.problem !== 'string') {
    throw new EdgemuxError('E_FRAME_MALFORMED', `GOODBYE: problem must be a string`);
  }
  if (type === FrameType.HELLO && body.capabilities !== undefined && !isStringList(body.capabilities)) {
    throw new EdgemuxError('E_FRAME_MALFORMED', `HELLO: capabilities must be an array of strings`);
  }
  if (type === FrameType.CLOSE && body.code !== undefined && !fieldMatches(body.code, 'string')) {
    throw new EdgemuxError('E_FRAME_MALFORMED', `CLOSE: code must be a string`);
  }
  return { type, streamId, body } as unknown as ControlFrame;
}

/**
 * Streaming frame decoder. Frames inside one chunk are handed out as views;
 * a frame that straddles chunks is assembled once into a buffer of its size.
 */
export class FrameDecoder extends UnitSplitter {
  private handler: FrameHandler | null = null;
  private readonly onFrame = (buf: Buffer, start: number, end: number): void => this.dispatch(buf, start, end, this.handler!);

  constructor(private readonly maxPayload: number) {
    super();
  }

  push(chunk: Buffer, handler: FrameHandler): void {
    this.handler = handler;
    this.split(chunk, this.onFrame);
  }

  protected sizeAt(buf: Buffer, offset: number): number {
    if (buf.length - offset < FRAME_HEADER_SIZE) return -1;
    const length = buf.readUInt32BE(offset + 5);
    if (length > this.maxPayload) {
      throw new EdgemuxError('E_FRAME_TOO_LARGE', `frame payload of ${length} bytes exceeds the maximum of ${this.maxPayload}`);
    }
    return FRAME_HEADER_SIZE + length;
  }

  private dispatch(buf: Buffer, start: number, end: number, handler: FrameHandler): void {
    const type = buf[start];
    const streamId = buf.readUInt32BE(start + 1);
    const payloadStart = start + FRAME_HEADER_SIZE;
    if (type === FrameType.DATA) {
      handler.data(streamId, buf.subarray(payloadStart, end));
      return;
    }
    if (type === FrameType.ACK) {
      if (end - payloadStart !== ACK_PAYLOAD_SIZE) {
        throw new EdgemuxError('E_FRAME_MALFORMED', `ACK payload must be ${ACK_PAYLOAD_SIZE} bytes`);
      }
      handler.ack(streamId, buf.readUInt32BE(payloadStart) * TWO_POW_32 + buf.readUInt32BE(payloadStart + 4));
      return;
    }
    handler.control(decodeControlBody(type, streamId, buf.subarray(payloadStart, end)));
  }
}

/** Decodes a complete byte sequence into frame values; for tests and tools, not the data path. */
export function decodeFrames(bytes: Buffer, maxPayload: number): Frame[] {
  const frames: Frame[] = [];
  const decoder = new FrameDecoder(maxPayload);
  decoder.push(bytes, {
    data: (streamId, payload) => frames.push({ type: FrameType.DATA, streamId, payload: Buffer.from(payload) }),
    ack: (streamId, consumed) => frames.push({ type: FrameType.ACK, streamId, consumed }),
    control: (frame) => frames.push(frame),
  });
  if (decoder.pendingBytes > 0) {
    throw new EdgemuxError('E_FRAME_MALFORMED', `truncated frame: ${decoder.pendingBytes} bytes left over`);
  }
  return frames;
}
