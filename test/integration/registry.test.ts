import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Registry } from '../../cloud-hub/registry.js';
import { SqlitePersistence } from '../../cloud-hub/sqlite-persistence.js';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

let tmpDir: string;
beforeAll(() => {
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'edgemux-registry-'));
});
afterAll(() => {
  fs.rmSync(tmpDir, { recursive: true, force: true });
});

let fileCounter = 0;
const freshPath = (): string => path.join(tmpDir, `r${++fileCounter}.db`);

/** A settable clock, so timestamps in assertions are exact. */
function manualClock(start = 1_700_000_000_000) {
  let now = start;
  return { now: () => now, advance: (ms: number) => (now += ms) };
}

/**
 * Counts row writes the registry's transactions make, from inside SQLite: a
 * TEMP trigger lives only on this connection and never touches the file.
 */
function countDeviceRowWrites(db: Database.Database): () => number {
  db.exec(`
    CREATE TEMP TABLE device_writes (n INTEGER);
    INSERT INTO device_writes VALUES (0);
    CREATE TEMP TRIGGER device_insert AFTER INSERT ON main.devices BEGIN UPDATE device_writes SET n = n + 1; END;
    CREATE TEMP TRIGGER device_update AFTER UPDATE ON main.devices BEGIN UPDATE device_writes SET n = n + 1; END;
  `);
  const read = db.prepare<[], { n: number }>('SELECT n FROM device_writes');
  return () => read.get()!.n;
}

describe('Registry', () => {
  it('accumulates counters in memory and writes each device once per flush', () => {
    const db = new Database(freshPath());
    const clock = manualClock();
    const registry = new Registry(db, { flushIntervalMs: 3_600_000, now: clock.now });
    const deviceRowWrites = countDeviceRowWrites(db);

    registry.agentConnected('site-a', 'sha256:aa', 1);
    for (let d = 0; d < 5; d++) registry.deviceConnected(`dev-${d}`, 'site-a');
    for (let i = 0; i < 10_000; i++) {
      registry.countToBroker(`dev-${i % 5}`, 100);
      if (i % 2 === 0) registry.countToDevice(`dev-${i % 5}`, 40);
    }
    expect(deviceRowWrites()).toBe(0);

    clock.advance(500);
    registry.flush();
    expect(registry.stats).toMatchObject({ flushes: 1, rowsWritten: 6, pendingRows: 0 });
    expect(deviceRowWrites()).toBe(5);

    const devices = registry.devices();
    expect(devices).toHaveLength(5);
    for (const device of devices) {
      expect(device).toMatchObject({
        agent_id: 'site-a',
        connected_since: 1_700_000_000_000,
        last_seen: 1_700_000_000_500,
        msgs_in: 2000,
        bytes_in: 200_000,
        msgs_out: 1000,
        bytes_out: 40_000,
      });
    }

    registry.countToBroker('dev-0', 10, 3);
    registry.flush();
    expect(registry.devices()[0]).toMatchObject({ client_id: 'dev-0', msgs_in: 2003, bytes_in: 200_010 });
    expect(registry.stats.flushes).toBe(2);
    expect(deviceRowWrites()).toBe(6);

    registry.close();
    db.close();
  });

  it('flushes on its timer in a few transactions however many packets are counted', async () => {
    const db = new Database(freshPath());
    const registry = new Registry(db, { flushIntervalMs: 25 });
    const deviceRowWrites = countDeviceRowWrites(db);

    let packets = 0;
    const startedAt = performance.now();
    for (let burst = 0; burst < 20; burst++) {
      for (let i = 0; i < 500; i++, packets++) registry.countToBroker(`dev-${i % 10}`, 64);
      await sleep(5);
    }
    await sleep(60);
    const elapsedMs = performance.now() - startedAt;

    const { flushes } = registry.stats;
    expect(packets).toBe(10_000);
    // One flush per 25 ms tick however long a loaded machine stretched the run,
    // never one per packet; each flush writes a device's row at most once.
    expect(flushes).toBeGreaterThanOrEqual(2);
    expect(flushes).toBeLessThanOrEqual(Math.ceil(elapsedMs / 25) + 1);
    expect(flushes).toBeLessThan(packets / 100);
    expect(deviceRowWrites()).toBeLessThanOrEqual(flushes * 10);
    const total = db.prepare<[], { n: number; bytes: number }>('SELECT SUM(msgs_in) AS n, SUM(bytes_in) AS bytes FROM devices').get();
    expect(total).toEqual({ n: 10_000, bytes: 640_000 });

    registry.close();
    db.close();
  });

  it('keeps agents and devices across close and reopen, and counts on from there', () => {
    const file = freshPath();
    const clock = manualClock();
    const first = new Registry({ path: file }, { now: clock.now });
    first.agentConnected('site-a', 'sha256:aa', 2);
    first.deviceConnected('dev-1', 'site-a');
    first.countToBroker('dev-1', 300, 3);
    first.countToDevice('dev-1', 50);
    clock.advance(1000);
    first.deviceDisconnected('dev-1');
    first.agentDisconnected('site-a', 1);
    first.close();

    clock.advance(60_000);
    const second = new Registry({ path: file }, { now: clock.now });
    expect(second.agents()).toEqual([
      { agent_id: 'site-a', cert_fingerprint: 'sha256:aa', first_seen: 1_700_000_000_000, last_seen: 1_700_000_001_000, tunnels: 1 },
    ]);
    expect(second.devices()).toEqual([
      {
        client_id: 'dev-1',
        agent_id: 'site-a',
        connected_since: null,
        last_seen: 1_700_000_001_000,
        msgs_in: 3,
        msgs_out: 1,
        bytes_in: 300,
        bytes_out: 50,
      },
    ]);

    // A reconnect through another agent keeps first_seen and the counters, takes the new fingerprint.
    second.agentConnected('site-a', 'sha256:bb', 1);
    second.deviceConnected('dev-1', 'site-b');
    second.countToBroker('dev-1', 100);
    expect(second.agents()[0]).toMatchObject({ cert_fingerprint: 'sha256:bb', first_seen: 1_700_000_000_000, last_seen: 1_700_000_061_000 });
    expect(second.devices()[0]).toMatchObject({ agent_id: 'site-b', connected_since: 1_700_000_061_000, msgs_in: 4, bytes_in: 400 });
    second.close();

    expect(() => second.countToBroker('dev-1', 1)).toThrow(expect.objectContaining({ code: 'E_REGISTRY_CLOSED' }));
  });

  it('holds at most maxPendingRows agents and devices between flushes, adding up the counts of those it holds', () => {
    const db = new Database(freshPath());
    const registry = new Registry(db, { flushIntervalMs: 3_600_000, maxPendingRows: 3 });
    registry.agentConnected('site-a', 'sha256:aa', 1);
    registry.deviceConnected('dev-1', 'site-a');
    registry.deviceConnected('dev-2', 'site-a');
    registry.deviceConnected('dev-3', 'site-a');
    registry.countToBroker('dev-4', 10);
    for (let i = 0; i < 1000; i++) registry.countToBroker('dev-1', 10);
    expect(registry.stats).toMatchObject({ pendingRows: 3, droppedChanges: 2 });

    registry.flush();
    expect(registry.stats).toMatchObject({ pendingRows: 0, rowsWritten: 3 });
    expect(registry.devices().map((row) => [row.client_id, row.msgs_in])).toEqual([
      ['dev-1', 1000],
      ['dev-2', 0],
    ]);
    // Room again after the flush.
    registry.countToBroker('dev-4', 10);
    expect(registry.devices().map((row) => row.client_id)).toEqual(['dev-1', 'dev-2', 'dev-4']);
    registry.close();
    db.close();
  });

  it('shares one connection and file with the SQLite persistence', async () => {
    const file = freshPath();
    const db = new Database(file);
    db.pragma('journal_mode = WAL');
    const persistence = new SqlitePersistence({ db });
    await persistence.setup({ id: 'hub-1' });
    const registry = new Registry(db);

    await persistence.storeRetained({ cmd: 'publish', topic: 'site/a', payload: Buffer.from('up'), qos: 0, retain: true });
    registry.deviceConnected('dev-1', 'site-a');
    registry.close();
    persistence.close();
    expect(db.open).toBe(true);
    db.close();

    const reopened = new Database(file, { readonly: true });
    const tables = reopened
      .prepare<[], { name: string }>("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
      .all()
      .map((row) => row.name);
    expect(tables).toEqual(expect.arrayContaining(['agents', 'devices', 'aedes_retained', 'aedes_outgoing']));
    expect(reopened.prepare('SELECT client_id FROM devices').all()).toEqual([{ client_id: 'dev-1' }]);
    reopened.close();
  });
});

describe('Registry expiry', () => {
  it('deletes devices and agents not seen for expireAfterMs, on a file that a restart reads back', () => {
    const file = freshPath();
    const clock = manualClock();
    const day = 24 * 3600 * 1000;
    const registry = new Registry({ path: file }, { flushIntervalMs: 3_600_000, now: clock.now, expireAfterMs: 90 * day });
    const expired: [number, number][] = [];
    registry.on('expired', (agents, devices) => expired.push([agents, devices]));
    registry.agentConnected('site-old', 'sha256:aa', 1);
    registry.deviceConnected('dev-old', 'site-old');
    registry.deviceDisconnected('dev-old');
    registry.agentDisconnected('site-old', 0);
    clock.advance(60 * day);
    registry.agentConnected('site-new', 'sha256:bb', 1);
    registry.deviceConnected('dev-new', 'site-new');
    registry.deviceDisconnected('dev-new');
    clock.advance(31 * day);

    expect(registry.expire()).toEqual({ agents: 1, devices: 1 });
    expect(expired).toEqual([[1, 1]]);
    expect(registry.stats.expiredRows).toBe(2);
    expect(registry.knowsDevice('dev-old')).toBe(false);
    registry.close();

    const reopened = new Registry({ path: file }, { flushIntervalMs: 3_600_000, now: clock.now });
    expect(reopened.devices().map((row) => row.client_id)).toEqual(['dev-new']);
    expect(reopened.agents().map((row) => row.agent_id)).toEqual(['site-new']);
    reopened.close();
  });
});
