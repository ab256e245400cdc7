import net from 'node:net';
import fc from 'fast-check';
import type { MqttClient } from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { Packr } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FRAME_HEADER_SIZE, FrameType, PROTOCOL_VERSION, writeFrameHeader } from '../../shared/frame-codec.js';
import { TUNNEL_DEFAULTS } from '../../shared/tunnel-defaults.js';
import { type Chain, eventually, removePki, startChain } from '../support/chain.js';
import { HostileAgent } from '../support/hostile-agent.js';

/**
 * Generated hostile input against a real chain: malformed MQTT into the
 * agent, malformed frames from an authenticated agent into the hub. Whatever
 * arrives, only its sender is closed: a canary device keeps its QoS 1 round
 * trips, and the state the hub and agent hold returns to the canary's alone.
 *
 * Deterministic by default; EDGEMUX_FUZZ_SEED picks another seed and
 * EDGEMUX_FUZZ_RUNS another count (CI keeps the defaults, well under a minute).
 */
const SEED = Number(process.env.EDGEMUX_FUZZ_SEED ?? 20261126);
const RUNS = Number(process.env.EDGEMUX_FUZZ_RUNS ?? 200);
/** Round trips and state checks every this many runs. */
const BATCH = 20;
/** A safety net for CI: a slow machine runs fewer cases rather than blowing the suite's budget. */
const TIME_LIMIT_MS = 20_000;
const CANARY = 'fuzz-canary';
const CANARY_TOPIC = `fuzz/${CANARY}`;
/** Loose: without --expose-gc the heap holds garbage of the runs; a leak per run of a connection or a session shows beyond it. */
const HEAP_GROWTH_LIMIT = (globalThis.gc ? 32 : 160) * 1024 * 1024;

async function checkProperty<T>(name: string, property: fc.IAsyncProperty<T>): Promise<void> {
  try {
    await fc.assert(property, { seed: SEED, numRuns: RUNS, endOnFailure: true, interruptAfterTimeLimit: TIME_LIMIT_MS, markInterruptAsFailure: false });
  } catch (err) {
    // Shrinking is off (endOnFailure): each run changes a live chain, so a shrunk case would not replay alone.
    throw new Error(`${name} failed; rerun with EDGEMUX_FUZZ_SEED=${SEED}\n${(err as Error).message}`, { cause: err });
  }
}

function heapUsed(): number {
  globalThis.gc?.();
  return process.memoryUsage().heapUsed;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A QoS 1 publish from the canary that comes back to it through agent, tunnel, hub and broker. */
async function roundTrip(canary: MqttClient, n: number): Promise<void> {
  const payload = `${n}:${Date.now()}`;
  const back = new Promise<void>((resolve) => {
    const onMessage = (topic: string, message: Buffer): void => {
      if (topic !== CANARY_TOPIC || message.toString() !== payload) return;
      canary.off('message', onMessage);
      resolve();
    };
    canary.on('message', onMessage);
  });
  await withTimeout(Promise.all([canary.publishAsync(CANARY_TOPIC, payload, { qos: 1 }), back]), 5000, `canary round trip ${n}`);
}

// ---------------------------------------------------------------- MQTT into the agent

function remainingLength(length: number): Buffer {
  const bytes: number[] = [];
  do {
    let digit = length % 128;
    length = Math.floor(length / 128);
    if (length > 0) digit |= 0x80;
    bytes.push(digit);
  } while (length > 0);
  return Buffer.from(bytes);
}

function packet(firstByte: number, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from([firstByte]), remainingLength(body.length), body]);
}

function utf8Field(bytes: Buffer): Buffer {
  const length = Buffer.alloc(2);
  length.writeUInt16BE(bytes.length);
  return Buffer.concat([length, bytes]);
}

/** An MQTT 3.1.1 CONNECT built field by field, so any field can be wrong. */
function rawConnect(fields: { name: Buffer; level: number; flags: number; clientId: Buffer }): Buffer {
  const keepalive = Buffer.from([0, 30]);
  return packet(0x10, Buffer.concat([utf8Field(fields.name), Buffer.from([fields.level, fields.flags]), keepalive, utf8Field(fields.clientId)]));
}

let deviceNumber = 0;
function validConnect(): Buffer {
  return mqttPacket.generate({ cmd: 'connect', clientId: `fuzz-${deviceNumber++}`, clean: true, keepalive: 30, protocolVersion: 4 });
}

/** MQTT 3.1.1 §1.5.3: ill-formed UTF-8, surrogates, overlongs and U+0000 must close the connection. */
const badUtf8 = fc.oneof(
  fc.constantFrom(
    Buffer.from([0xc0, 0x80]),
    Buffer.from([0xed, 0xa0, 0x80]),
    Buffer.from([0xff]),
    Buffer.from([0x00]),
    Buffer.from([0xe0, 0x80, 0xaf]),
    Buffer.from([0xf4, 0x90, 0x80, 0x80]),
    Buffer.from([0xc3]),
  ),
  fc.uint8Array({ minLength: 1, maxLength: 8 }).map((bytes) => Buffer.concat([Buffer.from(bytes), Buffer.from([0xfe])])),
);

const validPackets: Buffer[] = [
  mqttPacket.generate({ cmd: 'publish', topic: 'fuzz/t', payload: Buffer.from('hello'), qos: 1, messageId: 7, retain: false, dup: false }),
  mqttPacket.generate({ cmd: 'publish', topic: 'fuzz/t', payload: Buffer.alloc(300, 1), qos: 0, retain: false, dup: false }),
  mqttPacket.generate({ cmd: 'subscribe', messageId: 3, subscriptions: [{ topic: 'fuzz/#', qos: 1 }] }),
  mqttPacket.generate({ cmd: 'unsubscribe', messageId: 4, unsubscriptions: ['fuzz/#'] }),
  mqttPacket.generate({ cmd: 'puback', messageId: 9 }),
  mqttPacket.generate({ cmd: 'pubrel', messageId: 9 }),
  mqttPacket.generate({ cmd: 'pingreq' }),
  mqttPacket.generate({ cmd: 'disconnect' }),
];

interface MqttCase {
  kind: string;
  /** A valid CONNECT goes first, and its CONNACK is awaited, so what follows reaches the attached path. */
  afterConnect: boolean;
  bytes: Buffer[];
  /** The agent must close the connection by itself (MQTT requires it); otherwise the test ends its side. */
  mustClose: boolean;
}

const mqttCase: fc.Arbitrary<MqttCase> = fc.oneof(
  fc.record({
    kind: fc.constant('random bytes'),
    afterConnect: fc.boolean(),
    bytes: fc.array(fc.uint8Array({ minLength: 1, maxLength: 600 }).map((b) => Buffer.from(b)), { minLength: 1, maxLength: 3 }),
    mustClose: fc.constant(false),
  }),
  fc.record({
    kind: fc.constant('valid fixed header, corrupted body'),
    afterConnect: fc.boolean(),
    bytes: fc
      .tuple(fc.integer({ min: 0, max: 255 }), fc.uint8Array({ maxLength: 400 }))
      .map(([first, body]) => [packet(first, Buffer.from(body))]),
    mustClose: fc.constant(false),
  }),
  fc.record({
    kind: fc.constant('truncated packet'),
    afterConnect: fc.boolean(),
    bytes: fc
      .tuple(fc.constantFrom(...validPackets, validConnect()), fc.double({ min: 0, max: 1, noNaN: true }))
      .map(([whole, cut]) => [whole.subarray(0, Math.max(1, Math.floor(whole.length * cut) - 1))]),
    mustClose: fc.constant(false),
  }),
  fc.record({
    kind: fc.constant('oversized remaining length'),
    afterConnect: fc.boolean(),
    bytes: fc
      .tuple(fc.integer({ min: 0, max: 15 }), fc.integer({ min: TUNNEL_DEFAULTS.maxFramePayload + 1, max: 268_435_455 }), fc.uint8Array({ maxLength: 64 }))
      .map(([type, length, some]) => [Buffer.concat([Buffer.from([(type << 4) | (type === 3 ? 0 : 2)]), remainingLength(length), Buffer.from(some)])]),
    mustClose: fc.constant(true),
  }),
  fc.record({
    kind: fc.constant('remaining length of five bytes'),
    afterConnect: fc.boolean(),
    bytes: fc.tuple(fc.integer({ min: 0, max: 255 }), fc.uint8Array({ minLength: 4, maxLength: 4 })).map(([first, more]) => [
      Buffer.concat([Buffer.from([first]), Buffer.from(more.map((b) => b | 0x80)), Buffer.from([0x01, 0x00])]),
    ]),
    mustClose: fc.constant(true),
  }),
  fc.record({
    kind: fc.constant('CONNECT with a bad client ID'),
    afterConnect: fc.constant(false),
    bytes: badUtf8.map((bad) => [rawConnect({ name: Buffer.from('MQTT'), level: 4, flags: 0x02, clientId: Buffer.concat([Buffer.from('fuzz-'), bad]) })]),
    mustClose: fc.constant(true),
  }),
  fc.record({
    kind: fc.constant('CONNECT with a bad protocol name'),
    afterConnect: fc.constant(false),
    bytes: fc
      .oneof(badUtf8, fc.string({ maxLength: 10 }).map((s) => Buffer.from(s)))
      .filter((name) => !['MQTT', 'MQIsdp'].includes(name.toString('latin1')))
      .chain((name) => fc.integer({ min: 0, max: 255 }).map((level) => [rawConnect({ name, level, flags: 0x02, clientId: Buffer.from(`fuzz-n${deviceNumber++}`) })])),
    mustClose: fc.constant(true),
  }),
  fc.record({
    kind: fc.constant('CONNECT with a bad protocol level'),
    afterConnect: fc.constant(false),
    bytes: fc
      .integer({ min: 0, max: 255 })
      .filter((level) => level !== 4 && level !== 5)
      .map((level) => [rawConnect({ name: Buffer.from('MQTT'), level, flags: 0x02, clientId: Buffer.from(`fuzz-l${deviceNumber++}`) })]),
    mustClose: fc.constant(true),
  }),
  fc.record({
    kind: fc.constant('CONNECT with the reserved flag'),
    afterConnect: fc.constant(false),
    bytes: fc.integer({ min: 0, max: 127 }).map((flags) => [rawConnect({ name: Buffer.from('MQTT'), level: 4, flags: (flags << 1) | 1, clientId: Buffer.from(`fuzz-f${deviceNumber++}`) })]),
    mustClose: fc.constant(true),
  }),
  fc.record({
    kind: fc.constant('packet before CONNECT'),
    afterConnect: fc.constant(false),
    bytes: fc.constantFrom(...validPackets).map((first) => [first]),
    mustClose: fc.constant(true),
  }),
  fc.record({
    kind: fc.constant('second CONNECT'),
    afterConnect: fc.constant(true),
    bytes: fc.boolean().map((same) => [same ? validConnect() : mqttPacket.generate({ cmd: 'connect', clientId: '', clean: true, keepalive: 0, protocolVersion: 4 })]),
    mustClose: fc.constant(true),
  }),
);

const CONNACK_ACCEPTED = Buffer.from([0x20, 0x02, 0x00, 0x00]);

/** Sends one case over a fresh TCP connection to the agent and sees it closed. */
async function sendMqttCase(port: number, testCase: MqttCase): Promise<void> {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  try {
    await withTimeout(new Promise<void>((resolve) => socket.once('connect', resolve)), 3000, 'the TCP connection');
    if (testCase.afterConnect) {
      socket.write(validConnect());
      await eventually(() => Buffer.concat(chunks).subarray(0, 4).equals(CONNACK_ACCEPTED), 3000, 'CONNACK');
    }
    for (const bytes of testCase.bytes) socket.write(bytes);
    if (testCase.mustClose) {
      await withTimeout(closed, 3000, `the agent to close on ${testCase.kind}`);
      return;
    }
    // Give the agent a moment to act on the bytes, then end our side; it must let go.
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 10))]);
    socket.end();
    await withTimeout(closed, 3000, `the agent to close after ${testCase.kind} and FIN`);
  } finally {
    socket.destroy();
  }
}

// ---------------------------------------------------------------- frames into the hub

const packr = new Packr({ useRecords: false, moreTypes: false });

function frameBytes(type: number, streamId: number, payload: Buffer): Buffer {
  const out = Buffer.alloc(FRAME_HEADER_SIZE + payload.length);
  writeFrameHeader(out, 0, type, streamId, payload.length);
  payload.copy(out, FRAME_HEADER_SIZE);
  return out;
}

function control(type: number, streamId: number, body: unknown): Buffer {
  return frameBytes(type, streamId, packr.pack(body) as Buffer);
}

/** Values of every msgpack kind, for fields that should hold another. */
const anyValue = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.string({ maxLength: 12 }),
  fc.boolean(),
  fc.constant(null),
  fc.constant(-1),
  fc.constant(2 ** 53),
  fc.uint8Array({ maxLength: 8 }).map((b) => Buffer.from(b)),
  fc.array(fc.integer(), { maxLength: 3 }),
);

function clientIds(): fc.Arbitrary<string> {
  return fc.string({ maxLength: 24 }).filter((id) => id !== CANARY);
}

/** Which stream a frame names: the canary's at the hub (agent-1's), small ids, or any. */
function streamIds(canaryStream: () => number): fc.Arbitrary<number> {
  return fc.oneof(fc.constant(0).map(() => canaryStream()), fc.integer({ min: 0, max: 16 }), fc.integer({ min: 0, max: 0xffff_ffff }));
}

function hostileFrame(canaryStream: () => number): fc.Arbitrary<{ kind: string; bytes: Buffer }> {
  const id = streamIds(canaryStream);
  const tagged = (kind: string, bytes: fc.Arbitrary<Buffer>): fc.Arbitrary<{ kind: string; bytes: Buffer }> => bytes.map((b) => ({ kind, bytes: b }));
  return fc.oneof(
    tagged(
      'random control body',
      fc.tuple(fc.integer({ min: FrameType.HELLO, max: FrameType.GOODBYE }), id, fc.uint8Array({ maxLength: 200 })).map(([type, s, body]) => frameBytes(type, s, Buffer.from(body))),
    ),
    tagged(
      'control map with wrong fields',
      fc
        .tuple(fc.integer({ min: FrameType.HELLO, max: FrameType.GOODBYE }), id, fc.dictionary(fc.constantFrom('clientId', 'window', 'received', 'attempt', 'keepalive', 'protocolVersion', 'cleanSession', 'reason', 'abrupt', 'code', 'sentAt', 'version', 'role', 'x'), anyValue))
        .map(([type, s, body]) => control(type, s, body)),
    ),
    tagged('unknown type', fc.tuple(fc.integer({ min: 10, max: 255 }), id, fc.uint8Array({ maxLength: 64 })).map(([type, s, body]) => frameBytes(type, s, Buffer.from(body)))),
    tagged('DATA for an unknown stream', fc.tuple(id, fc.uint8Array({ maxLength: 300 })).map(([s, body]) => frameBytes(FrameType.DATA, s, Buffer.from(body)))),
    tagged(
      'ACK with a bad length',
      fc.tuple(id, fc.uint8Array({ maxLength: 16 }).filter((b) => b.length !== 8)).map(([s, body]) => frameBytes(FrameType.ACK, s, Buffer.from(body))),
    ),
    tagged('ACK of any offset', fc.tuple(id, fc.uint8Array({ minLength: 8, maxLength: 8 })).map(([s, body]) => frameBytes(FrameType.ACK, s, Buffer.from(body)))),
    tagged(
      'oversized frame header',
      fc.tuple(fc.integer({ min: 0, max: 255 }), id, fc.integer({ min: TUNNEL_DEFAULTS.maxFramePayload + 1, max: 0xffff_ffff })).map(([type, s, length]) => {
        const header = Buffer.alloc(FRAME_HEADER_SIZE + 16);
        writeFrameHeader(header, 0, type, s, length);
        return header;
      }),
    ),
    tagged(
      'OPEN with a bad body',
      fc
        .tuple(id, fc.record({ clientId: fc.oneof(clientIds(), anyValue), window: anyValue, keepalive: anyValue, protocolVersion: anyValue, cleanSession: anyValue }, { requiredKeys: [] }))
        .map(([s, body]) => control(FrameType.OPEN, s, body)),
    ),
    tagged(
      'OPEN then DATA',
      fc
        .tuple(
          fc.integer({ min: 0, max: 40 }),
          clientIds(),
          fc.integer({ min: 0, max: 2 ** 31 }),
          fc.oneof(
            fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
            clientIds().map((clientId) => mqttPacket.generate({ cmd: 'connect', clientId, clean: true, keepalive: 30, protocolVersion: 4 })),
          ),
        )
        .map(([s, clientId, window, data]) =>
          Buffer.concat([control(FrameType.OPEN, s, { clientId, window, keepalive: 30, protocolVersion: 4, cleanSession: true }), frameBytes(FrameType.DATA, s, data)]),
        ),
    ),
    tagged(
      'RESUME of a stream it does not own',
      fc
        .tuple(id, fc.oneof(fc.constant(CANARY), clientIds()), fc.nat(), fc.nat(), fc.nat())
        .map(([s, clientId, window, received, attempt]) => control(FrameType.RESUME, s, { clientId, window, received, attempt })),
    ),
    tagged(
      'CLOSE of a stream it does not own',
      fc.tuple(id, fc.boolean(), fc.string({ maxLength: 12 })).map(([s, abrupt, reason]) => control(FrameType.CLOSE, s, { code: 'closed', reason, abrupt })),
    ),
    tagged(
      'second HELLO',
      fc.constant(0).map(() => control(FrameType.HELLO, 0, { version: PROTOCOL_VERSION, role: 'agent', id: 'hostile', heartbeatMs: 1000, streamWindow: 65536, maxFramePayload: 65536, instance: 'x' })),
    ),
  );
}

// ---------------------------------------------------------------- the tests

describe('fuzz: hostile input closes only its sender', () => {
  let chain: Chain;
  let canary: MqttClient;
  let canaryCloses = 0;
  let trips = 0;
  let heapBefore = 0;

  beforeAll(async () => {
    chain = await startChain();
    canary = await chain.device({ clientId: CANARY, clean: true, keepalive: 30 });
    canary.on('close', () => canaryCloses++);
    await canary.subscribeAsync(CANARY_TOPIC, { qos: 1 });
    await roundTrip(canary, trips++);
    heapBefore = heapUsed();
  });
  afterAll(async () => {
    await chain?.close();
    await removePki();
  });

  /** The canary's session at the hub, the same object from start to end: it was never replaced or resumed. */
  function canarySession() {
    return [...chain.hub.devices()].find((session) => session.clientId === CANARY);
  }

  /** After a batch: the canary still round-trips and the hub and agent hold nothing of the hostile senders. */
  async function checkBatch(expectedSession: unknown): Promise<void> {
    await roundTrip(canary, trips++);
    expect(canaryCloses).toBe(0);
    expect(canarySession()).toBe(expectedSession);
    await eventually(() => chain.agent.stats().devices === 1, 5000, 'the agent to hold only the canary');
    await eventually(() => {
      const stats = chain.hub.stats();
      return stats.sessions === 1 && stats.queuedBytes === 0 && stats.replayBytes === 0 && stats.brokerHeldBytes === 0 && stats.unauthenticated === 0;
    }, 5000, 'the hub to hold only the canary, nothing queued');
    const agentOne = chain.hub.agentViews().find((view) => view.agentId === 'agent-1');
    expect(agentOne?.sessions).toBe(1);
    expect(agentOne?.tunnels.length).toBe(2);
  }

  it('malformed MQTT into the agent closes only that device', async () => {
    const session = canarySession();
    expect(session).toBeDefined();
    let runs = 0;
    await checkProperty(
      'MQTT fuzz',
      fc.asyncProperty(mqttCase, async (testCase) => {
        await sendMqttCase(chain.devicePort, testCase);
        if (++runs % BATCH === 0) await checkBatch(session);
      }),
    );
    await checkBatch(session);
    expect(heapUsed() - heapBefore).toBeLessThan(HEAP_GROWTH_LIMIT);
  }, 60_000);

  it('malformed frames from an authenticated agent close only its tunnel', async () => {
    const session = canarySession()!;
    const canaryStream = (): number => session.stream.id;
    const agentTwo = chain.pki.agents['agent-2'];
    const tunnelPort = chain.hub.tunnelAddress.port;
    /** agent-2 holds no tunnel at the hub, so its next instance is not refused as a second one. */
    const agentTwoGone = () => eventually(() => !chain.hub.agentViews().some((view) => view.agentId === 'agent-2' && view.tunnels.length > 0), 5000, 'agent-2 tunnels to close');
    let runs = 0;
    let ping = 0;
    await checkProperty(
      'frame fuzz',
      fc.asyncProperty(fc.array(hostileFrame(canaryStream), { minLength: 1, maxLength: 4 }), async (frames) => {
        await agentTwoGone();
        const hostile = await HostileAgent.connect(tunnelPort, chain.pki.ca, agentTwo);
        try {
          for (const frame of frames) hostile.raw(frame.bytes);
          // The hub either closed the tunnel or ignored what it could: a PING after it is answered.
          const sentAt = ++ping;
          hostile.control({ type: FrameType.PING, streamId: 0, body: { sentAt } });
          await withTimeout(
            hostile.next((frame) => frame.type === FrameType.PONG && frame.body.sentAt === sentAt).then(
              // Still up: a goodbye ends the sessions this instance opened, as an agent that stops would.
              () => hostile.control({ type: FrameType.GOODBYE, streamId: 0, body: { code: 'shutdown', reason: 'fuzz run over' } }),
              () => undefined,
            ),
            5000,
            `PONG or a closed tunnel after ${frames.map((frame) => frame.kind).join(', ')}`,
          );
        } finally {
          hostile.close();
        }
        if (++runs % BATCH === 0) await checkBatch(session);
      }),
    );
    // One last instance says goodbye: the hub ends sessions agent-2 left detached.
    await agentTwoGone();
    const last = await HostileAgent.connect(tunnelPort, chain.pki.ca, agentTwo);
    last.control({ type: FrameType.GOODBYE, streamId: 0, body: { code: 'shutdown', reason: 'fuzz over' } });
    await last.closed;
    await checkBatch(session);
    expect(heapUsed() - heapBefore).toBeLessThan(HEAP_GROWTH_LIMIT);
  }, 60_000);
});
