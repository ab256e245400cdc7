import assert from 'node:assert';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import type { Readable } from 'node:stream';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { Aedes } from 'aedes';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqlitePersistence, type StoredPacket } from '../../cloud-hub/sqlite-persistence.js';

const require = createRequire(import.meta.url);

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(check: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check() && Date.now() < deadline) await sleep(10);
}

async function toArray<T>(stream: Readable): Promise<T[]> {
  const items: T[] = [];
  for await (const item of stream) items.push(item as T);
  return items;
}

let tmpDir: string;
beforeAll(() => {
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'edgemux-persistence-'));
});
afterAll(() => {
  fs.rmSync(tmpDir, { recursive: true, force: true });
});

let dbCounter = 0;
const freshPath = (): string => path.join(tmpDir, `p${++dbCounter}.db`);

/**
 * abstract.js is written against node:test's TestContext (t.plan, t.assert.*,
 * t.diagnostic) and takes the `test` function as a parameter, so each of its
 * cases becomes a vitest case here. t.assert is node:assert's legacy (loose)
 * API, exactly as node:test exposes it, and a plan is checked at the end.
 */
type AssertFn = (...args: unknown[]) => unknown;
interface NodeTestContext {
  plan(count: number): void;
  diagnostic(message: string): void;
  assert: Record<string, AssertFn>;
}

function nodeTestShim(name: string, fn: (t: NodeTestContext) => Promise<void>): void {
  it(name, async () => {
    let planned: number | undefined;
    let asserted = 0;
    const counted: Record<string, AssertFn> = {};
    for (const method of ['ok', 'equal', 'notEqual', 'deepEqual', 'notDeepEqual', 'strictEqual', 'deepStrictEqual', 'fail']) {
      const original = (assert as unknown as Record<string, AssertFn>)[method];
      counted[method] = (...args) => {
        asserted++;
        return original(...args);
      };
    }
    await fn({
      plan: (count) => {
        planned = count;
      },
      diagnostic: () => {},
      assert: counted,
    });
    if (planned !== undefined) expect(asserted, `plan(${planned})`).toBe(planned);
  });
}

const abstractPersistence = require('aedes-persistence/abstract.js') as (opts: {
  test: typeof nodeTestShim;
  persistence: () => unknown;
  testAsync: boolean;
}) => void;

describe('aedes-persistence abstract suite (file-backed, WAL)', () => {
  abstractPersistence({
    test: nodeTestShim,
    persistence: () => new SqlitePersistence({ path: freshPath() }),
    testAsync: true,
  });
});

describe('aedes-persistence abstract suite (:memory:)', () => {
  abstractPersistence({
    test: nodeTestShim,
    persistence: () => new SqlitePersistence({ path: ':memory:' }),
    testAsync: true,
  });
});

describe('batching and durability', () => {
  it('commits all writes issued in one event-loop turn in one transaction, visible to another connection once resolved', async () => {
    const file = freshPath();
    const persistence = new SqlitePersistence({ path: file });
    await persistence.setup({ id: 'broker-a' });
    const subs = [{ clientId: 'c1' }, { clientId: 'c2' }];
    const writes: Promise<unknown>[] = [];
    for (let i = 0; i < 200; i++) {
      writes.push(
        persistence.outgoingEnqueueCombi(subs, {
          cmd: 'publish',
          topic: 't',
          payload: Buffer.from(String(i)),
          qos: 1,
          brokerId: 'broker-a',
          brokerCounter: i + 1,
        }),
      );
    }
    writes.push(persistence.storeRetained({ cmd: 'publish', topic: 'r', payload: Buffer.from('x'), qos: 0, retain: true }));
    const before = persistence.stats.transactions;
    await Promise.all(writes);
    expect(persistence.stats.transactions - before).toBe(1);

    const observer = new Database(file, { readonly: true });
    try {
      expect(observer.prepare('SELECT COUNT(*) AS n FROM aedes_outgoing').get()).toEqual({ n: 400 });
      expect(observer.prepare('SELECT COUNT(*) AS n FROM aedes_retained').get()).toEqual({ n: 1 });
    } finally {
      observer.close();
      persistence.close();
    }
  });

  it('a failing lookup rejects only its own call, not the batch it shares', async () => {
    const persistence = new SqlitePersistence({ path: ':memory:' });
    await persistence.setup({ id: 'b' });
    const client = { id: 'c' };
    const stored = persistence.incomingStorePacket(client, { cmd: 'publish', topic: 't', payload: Buffer.from('p'), qos: 2, messageId: 7 });
    const missing = persistence.incomingGetPacket(client, { messageId: 8 });
    const found = persistence.incomingGetPacket(client, { messageId: 7 });
    await stored;
    await expect(missing).rejects.toMatchObject({ code: 'E_PERSISTENCE_NOT_FOUND' });
    expect((await found).messageId).toBe(7);
    persistence.close();
  });

  it('rejects calls after close and keeps what was queued before it', async () => {
    const file = freshPath();
    const persistence = new SqlitePersistence({ path: file });
    await persistence.setup({ id: 'b' });
    const pending = persistence.addSubscriptions({ id: 'c' }, [{ topic: 'a/#', qos: 1 }]);
    persistence.close();
    await pending;
    await expect(persistence.getWill({ id: 'c' })).rejects.toMatchObject({ code: 'E_PERSISTENCE_CLOSED' });

    const reopened = new SqlitePersistence({ path: file });
    expect(await reopened.subscriptionsByTopic('a/b')).toEqual([
      { clientId: 'c', topic: 'a/#', qos: 1, rh: undefined, rap: undefined, nl: undefined },
    ]);
    expect(await reopened.countOffline()).toEqual({ subsCount: 1, clientsCount: 1 });
    reopened.close();
  });
});

describe('outgoing queue storage', () => {
  it('stores a fanned-out packet once and drops it when the last session has acknowledged it', async () => {
    const persistence = new SqlitePersistence({ path: ':memory:' });
    await persistence.setup({ id: 'b' });
    const packets = persistence.db.prepare<[], { n: number }>('SELECT COUNT(*) AS n FROM aedes_outgoing_packets');
    const subs = ['a', 'b', 'c'].map((clientId) => ({ clientId }));
    const publish = { cmd: 'publish', topic: 't', payload: Buffer.from('x'), qos: 1, brokerId: 'b', brokerCounter: 1 };
    await persistence.outgoingEnqueueCombi(subs, publish);
    expect(packets.get()?.n).toBe(1);

    for (const [i, { clientId }] of subs.entries()) {
      await persistence.outgoingUpdate({ id: clientId }, { ...publish, messageId: 10 + i });
    }
    await persistence.outgoingClearMessageId({ id: 'a' }, { messageId: 10 });
    // The PUBREL that replaces c's PUBLISH is stored on its own; the shared PUBLISH stays for b.
    await persistence.outgoingUpdate({ id: 'c' }, { cmd: 'pubrel', messageId: 12 });
    expect(packets.get()?.n).toBe(2);
    expect(await toArray(persistence.outgoingStream({ id: 'c' }))).toEqual([{ cmd: 'pubrel', messageId: 12 }]);

    const cleared = await persistence.outgoingClearMessageId({ id: 'b' }, { messageId: 11 });
    expect(cleared).toMatchObject({ topic: 't', messageId: 11, brokerCounter: 1 });
    expect(packets.get()?.n).toBe(1);
    await persistence.outgoingClearMessageId({ id: 'c' }, { messageId: 12 });
    expect(packets.get()?.n).toBe(0);
    persistence.close();
  });
});

describe('retained lookups', () => {
  // The range scan on the literal prefix must never drop a message qlobber
  // would match; the memory store is the reference answer.
  it('match exactly what the memory persistence matches', async () => {
    const AsyncMemory = require('aedes-persistence/asyncPersistence.js') as new () => {
      setup(broker: object): Promise<void>;
      storeRetained(packet: StoredPacket): Promise<void>;
      createRetainedStream(pattern: string): Readable;
    };
    const level = fc.constantFrom('a', 'b', 'ab', 'a-b', '', '$SYS', 'ü', 'a0');
    const topic = fc.array(level, { minLength: 1, maxLength: 4 }).map((levels) => levels.join('/')).filter((t) => t.length > 0);
    const filterLevel = fc.oneof(level, fc.constant('+'));
    const pattern = fc
      .tuple(fc.array(filterLevel, { minLength: 1, maxLength: 4 }), fc.boolean())
      .map(([levels, hash]) => (hash ? [...levels, '#'] : levels).join('/'));

    await fc.assert(
      fc.asyncProperty(fc.uniqueArray(topic, { minLength: 1, maxLength: 12 }), fc.array(pattern, { minLength: 1, maxLength: 4 }), async (topics, patterns) => {
        const reference = new AsyncMemory();
        await reference.setup({ id: 'b' });
        const persistence = new SqlitePersistence({ path: ':memory:' });
        await persistence.setup({ id: 'b' });
        for (const t of topics) {
          const packet = { cmd: 'publish', topic: t, payload: Buffer.from(t || '-'), qos: 0, retain: true };
          await reference.storeRetained(packet);
          await persistence.storeRetained(packet);
        }
        for (const p of patterns) {
          const expected = (await toArray<StoredPacket>(reference.createRetainedStream(p))).map((m) => m.topic).sort();
          const actual = (await toArray<StoredPacket>(persistence.createRetainedStream(p))).map((m) => m.topic).sort();
          expect(actual, p).toEqual(expected);
        }
        persistence.close();
      }),
      { numRuns: 150 },
    );
  });
});

describe('broker restart on the same SQLite file', () => {
  async function startBroker(file: string) {
    const persistence = new SqlitePersistence({ path: file });
    const broker = await Aedes.createBroker({ persistence });
    const sockets = new Set<net.Socket>();
    const server = net.createServer((socket) => {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
      broker.handle(socket);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const url = `mqtt://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    const stop = async (): Promise<void> => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve) => broker.close(() => resolve()));
      persistence.close();
    };
    return { persistence, url, stop };
  }

  it('delivers the offline queue and serves retained messages after a restart', async () => {
    const file = freshPath();
    const subscriberOptions = { clientId: 'restart-sub', clean: false, reconnectPeriod: 0, protocolVersion: 4 as const };

    const first = await startBroker(file);
    const subscriber = await mqtt.connectAsync(first.url, subscriberOptions);
    await subscriber.subscribeAsync('fleet/cmd/#', { qos: 1 });
    await subscriber.endAsync();

    const publisher = await mqtt.connectAsync(first.url, { clientId: 'restart-pub', reconnectPeriod: 0 });
    await publisher.publishAsync('fleet/status', 'online', { qos: 1, retain: true });
    // PUBACK comes after aedes' enqueue resolved, i.e. after the batch committed.
    await Promise.all(
      Array.from({ length: 50 }, (_, i) => publisher.publishAsync(`fleet/cmd/${i % 5}`, `m${i}`, { qos: 1 })),
    );
    await publisher.endAsync();
    await first.stop();

    const second = await startBroker(file);
    try {
      const received: string[] = [];
      const resumed = mqtt.connect(second.url, subscriberOptions);
      resumed.on('message', (_topic, payload) => received.push(payload.toString()));
      const connack = await new Promise<{ sessionPresent: boolean }>((resolve) => resumed.once('connect', resolve));
      expect(connack.sessionPresent).toBe(true);
      await waitFor(() => received.length >= 50, 10_000);
      expect(received).toEqual(Array.from({ length: 50 }, (_, i) => `m${i}`));

      const queued = second.persistence.db.prepare<[string], { n: number }>('SELECT COUNT(*) AS n FROM aedes_outgoing WHERE client_id = ?');
      await waitFor(() => queued.get('restart-sub')?.n === 0, 5_000);
      expect(queued.get('restart-sub')?.n).toBe(0);
      expect(second.persistence.db.prepare('SELECT COUNT(*) AS n FROM aedes_outgoing_packets').get()).toEqual({ n: 0 });
      await resumed.endAsync();

      const newcomer = await mqtt.connectAsync(second.url, { clientId: 'restart-new', reconnectPeriod: 0 });
      const retained = new Promise<{ topic: string; payload: string; retain: boolean }>((resolve) => {
        newcomer.on('message', (topic, payload, packet) => resolve({ topic, payload: payload.toString(), retain: packet.retain }));
      });
      await newcomer.subscribeAsync('fleet/#', { qos: 1 });
      expect(await retained).toEqual({ topic: 'fleet/status', payload: 'online', retain: true });
      await newcomer.endAsync();
    } finally {
      await second.stop();
    }
  });
});
