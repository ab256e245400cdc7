/**
 * The cloud subscriber: one raw MQTT 3.1.1 connection (no MQTT.js: it must
 * keep up with 100k+ messages per second on one core) subscribed to all
 * telemetry. Counts deliveries and records end-to-end latency from the time
 * stamp firmware-sim writes into every payload.
 */
import net from 'node:net';
import { generate } from 'mqtt-packet';
import { LatencyHistogram } from '../firmware-sim/latency-histogram.js';
import { TELEMETRY_HEADER_BYTES, nowMs } from '../firmware-sim/telemetry-payload.js';
import { MqttFramer, PacketType, packetTypeOf } from '../shared/mqtt-framing.js';
import { serveRpc } from './rpc.js';

export interface SubscribeParams {
  host: string;
  port: number;
  qos: 0 | 1;
  filter: string;
  clientId: string;
  timeoutMs?: number;
}

export interface SubscriberReading {
  /** Telemetry messages delivered since connect. */
  total: number;
  /** Since the last mark. */
  count: number;
  elapsedMs: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
}

const MAX_PACKET = 1024 * 1024;
const PUBACK_SIZE = 4;

let socket: net.Socket | null = null;
let total = 0;
let markTotal = 0;
let markAt = performance.now();
const latency = new LatencyHistogram();
let maxMs = 0;
let onSuback: (() => void) | null = null;
/** How far the publishers' clock runs behind ours (ms), taken off every latency. */
let stampOffset = 0;
let failure: Error | null = null;

/** Byte offset of the variable header: after the type byte and 1–4 remaining-length bytes. */
function variableHeaderOffset(packet: Buffer): number {
  let i = 1;
  while (packet[i] & 0x80) i++;
  return i + 1;
}

function onData(this: net.Socket, chunk: Buffer, framer: MqttFramer): void {
  let acks: number[] | null = null;
  framer.push(chunk, (packet) => {
    const type = packetTypeOf(packet);
    if (type === PacketType.PUBLISH) {
      const qos = (packet[0] >> 1) & 3;
      let at = variableHeaderOffset(packet);
      at += 2 + packet.readUInt16BE(at);
      if (qos > 0) {
        (acks ??= []).push(packet.readUInt16BE(at));
        at += 2;
      }
      total++;
      if (packet.length - at >= TELEMETRY_HEADER_BYTES) {
        const ms = nowMs() - stampOffset - packet.readDoubleBE(at);
        latency.record(ms);
        if (ms > maxMs) maxMs = ms;
      }
    } else if (type === PacketType.SUBACK) {
      onSuback?.();
    }
  });
  if (acks !== null) {
    const list: number[] = acks;
    const out = Buffer.allocUnsafe(list.length * PUBACK_SIZE);
    for (let k = 0; k < list.length; k++) {
      out[k * 4] = 0x40;
      out[k * 4 + 1] = 0x02;
      out.writeUInt16BE(list[k], k * 4 + 2);
    }
    this.write(out);
  }
}

function reading(): SubscriberReading {
  return {
    total,
    count: total - markTotal,
    elapsedMs: performance.now() - markAt,
    p50Ms: latency.percentile(50),
    p99Ms: latency.percentile(99),
    p999Ms: latency.percentile(99.9),
    maxMs,
  };
}

/**
 * Delivery feedback for the load generator (see loadgen.ts `window`): every
 * peer gets the running total as a float64 whenever it changed, every 2 ms.
 */
const FEEDBACK_INTERVAL_MS = 2;
function startFeedback(): Promise<number> {
  const peers = new Set<net.Socket>();
  let lastSent = -1;
  setInterval(() => {
    if (total === lastSent || peers.size === 0) return;
    lastSent = total;
    const msg = Buffer.allocUnsafe(8);
    msg.writeDoubleBE(total);
    for (const peer of peers) peer.write(msg);
  }, FEEDBACK_INTERVAL_MS).unref();
  const server = net.createServer({ noDelay: true }, (peer) => {
    peers.add(peer);
    peer.on('error', () => peer.destroy());
    peer.on('close', () => peers.delete(peer));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port));
  });
}

serveRpc({
  feedback(): Promise<number> {
    return startFeedback();
  },
  async connect(params: SubscribeParams): Promise<void> {
    const framer = new MqttFramer(MAX_PACKET);
    const s = net.connect({ host: params.host, port: params.port, noDelay: true });
    socket = s;
    s.on('data', function (this: net.Socket, chunk: Buffer) {
      onData.call(this, chunk, framer);
    });
    s.on('error', (err) => {
      failure = err;
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no SUBACK from ${params.host}:${params.port} within ${params.timeoutMs ?? 10_000} ms`)), params.timeoutMs ?? 10_000);
      onSuback = () => {
        clearTimeout(timer);
        onSuback = null;
        resolve();
      };
      s.once('close', () => {
        clearTimeout(timer);
        reject(failure ?? new Error('subscriber connection closed'));
      });
      s.once('connect', () => {
        s.write(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: params.clientId, clean: true, keepalive: 0 }));
        s.write(generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: params.filter, qos: params.qos }] }));
      });
    });
  },
  clockOffset(ms: number): void {
    stampOffset = ms;
  },
  mark(): SubscriberReading {
    const before = reading();
    markTotal = total;
    markAt = performance.now();
    latency.reset();
    maxMs = 0;
    return before;
  },
  read(): SubscriberReading {
    if (socket === null || socket.destroyed) throw new Error(`subscriber is not connected${failure ? `: ${failure.message}` : ''}`);
    return reading();
  },
  close(): void {
    socket?.destroy();
    socket = null;
  },
});
