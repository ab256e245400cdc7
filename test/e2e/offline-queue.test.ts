import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Chain, eventually, removePki, startChain } from '../support/chain.js';

interface LogLine {
  msg: string;
  clientId?: string;
  queuedMessages?: number;
}

describe.each([
  { state: 'a state file', onDisk: true },
  { state: 'memory', onDisk: false },
])('offline queues are bounded per session, in $state', ({ onDisk }) => {
  let dir: string;
  let chain: Chain;
  let logs: LogLine[];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'edgemux-queue-'));
    logs = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
    chain = await startChain({
      hub: { log, offlineQueue: { maxMessages: 10, maxBytes: 8 * 1024 }, ...(onDisk ? { statePath: join(dir, 'hub.db') } : {}) },
    });
  });
  afterEach(async () => {
    await chain.close();
    rmSync(dir, { recursive: true, force: true });
  });
  afterAll(removePki);

  async function away(clientId: string): Promise<void> {
    const device = await chain.device({ clientId, clean: false });
    await device.subscribeAsync('cmd/#', { qos: 1 });
    await device.endAsync();
  }

  /** What the session had queued: `expected` messages, and then nothing more before a marker sent behind them. */
  async function collect(clientId: string, expected: number): Promise<string[]> {
    const payloads: string[] = [];
    const device = await chain.device({ clientId, clean: false });
    device.on('message', (_topic, payload) => payloads.push(payload.toString()));
    await eventually(() => payloads.length >= expected, 5000, `${expected} queued messages`);
    const app = await chain.app({ clientId: `app-marker-${clientId}` });
    await app.publishAsync('cmd/marker', 'marker', { qos: 1 });
    await eventually(() => payloads.includes('marker'), 5000, 'the marker');
    return payloads.filter((payload) => payload !== 'marker');
  }

  it('keeps the oldest messages up to maxMessages and drops the newer ones, saying so', async () => {
    await away('dev-away');
    const app = await chain.app({ clientId: 'app-1' });
    for (let i = 0; i < 30; i++) await app.publishAsync('cmd/x', `m${i}`, { qos: 1 });
    await eventually(() => chain.hub.stats().offlineDropped === 20, 5000, '20 dropped');
    if (onDisk) {
      chain.hub.registry!.flush();
      const db = new Database(join(dir, 'hub.db'), { readonly: true });
      expect(db.prepare("SELECT count(*) AS n FROM aedes_outgoing WHERE client_id = 'dev-away'").get()).toEqual({ n: 10 });
      db.close();
    }
    expect(logs.filter((line) => line.msg === 'dropping new messages for a session that is away')).toEqual([
      expect.objectContaining({ clientId: 'dev-away', queuedMessages: 10 }),
    ]);
    expect(await collect('dev-away', 10)).toEqual(Array.from({ length: 10 }, (_, i) => `m${i}`));
  });

  it('bounds the bytes queued, whatever the message count', async () => {
    await away('dev-bytes');
    const app = await chain.app({ clientId: 'app-2' });
    for (let i = 0; i < 10; i++) await app.publishAsync('cmd/x', Buffer.alloc(2000, 0x30 + i), { qos: 1 });
    // Each is stored in a little over 2000 bytes: three fit in 8 KiB, four do not.
    const kept = await collect('dev-bytes', 3);
    expect(kept.map((payload) => payload[0])).toEqual(['0', '1', '2']);
    expect(chain.hub.stats().offlineDropped).toBe(7);
  });

  it('does not limit a connected session', async () => {
    const device = await chain.device({ clientId: 'dev-online', clean: false });
    await device.subscribeAsync('cmd/#', { qos: 1 });
    const received: string[] = [];
    device.on('message', (_topic, payload) => received.push(payload.toString()));
    const app = await chain.app({ clientId: 'app-3' });
    await Promise.all(Array.from({ length: 50 }, (_, i) => app.publishAsync('cmd/x', `m${i}`, { qos: 1 })));
    await eventually(() => received.length === 50, 5000, 'all 50');
    expect(chain.hub.stats().offlineDropped).toBe(0);
  });
});
