import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { MqttClient } from 'mqtt';
import { pino } from 'pino';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Chain, eventually, removePki, startChain } from '../support/chain.js';

interface LogLine {
  msg: string;
  clientId?: string;
  reason?: string;
}

/** The SUBACK's return codes, refusals included (MQTT.js rejects on any). */
async function subackCodes(device: MqttClient, topics: string | string[], qos: 0 | 1): Promise<number[]> {
  return device.subscribeAsync(topics, { qos }).then(
    (granted) => granted.map((grant) => grant.qos),
    (err: { packet?: { granted?: number[] } }) => {
      if (err.packet?.granted === undefined) throw err;
      return err.packet.granted;
    },
  );
}

describe('subscriptions are limited per client, in length and in depth', () => {
  let dir: string;
  let chain: Chain;
  let logs: LogLine[];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'edgemux-subs-'));
    logs = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
    chain = await startChain({
      hub: { log, statePath: join(dir, 'hub.db'), subscriptionLimits: { maxPerClient: 5, maxTopicLength: 64, maxTopicLevels: 4 } },
    });
  });
  afterEach(async () => {
    await chain.close();
    rmSync(dir, { recursive: true, force: true });
  });
  afterAll(removePki);

  it('grants up to the limits, answers 0x80 for the excess, keeps the device and stores only what it granted', async () => {
    const device = await chain.device({ clientId: 'dev-subs', clean: false });
    let closed = false;
    device.on('close', () => (closed = true));
    const received: string[] = [];
    device.on('message', (topic) => received.push(topic));

    expect(await subackCodes(device, Array.from({ length: 7 }, (_, i) => `t/${i}`), 1)).toEqual([1, 1, 1, 1, 1, 128, 128]);
    // Subscribing again to a filter it holds is not one more.
    expect(await subackCodes(device, 't/0', 1)).toEqual([1]);
    await device.unsubscribeAsync('t/4');
    expect(await subackCodes(device, ['long/' + 'x'.repeat(60), 'a/b/c/d/e', 'a/b/c/d'], 0)).toEqual([128, 128, 0]);

    const app = await chain.app({ clientId: 'app-subs' });
    for (const topic of ['t/5', 'a/b/c/d/e', 't/0', 'a/b/c/d']) await app.publishAsync(topic, 'x', { qos: 1 });
    await eventually(() => received.length === 2, 5000, 'two messages');
    expect(received).toEqual(['t/0', 'a/b/c/d']);
    expect(closed).toBe(false);

    expect(chain.hub.stats().subscriptionsRefused).toBe(4);
    const refusals = logs.filter((line) => line.msg === 'subscription refused');
    expect(refusals).toHaveLength(1);
    expect(refusals[0]).toMatchObject({ clientId: 'dev-subs', reason: expect.stringContaining('subscriptions.maxPerClient (5)') });

    await device.endAsync();
    chain.hub.registry!.flush();
    const db = new Database(join(dir, 'hub.db'), { readonly: true });
    const stored = db.prepare("SELECT topic FROM aedes_subscriptions WHERE client_id = 'dev-subs' ORDER BY topic").all();
    db.close();
    expect(stored.map((row) => (row as { topic: string }).topic)).toEqual(['a/b/c/d', 't/0', 't/1', 't/2', 't/3']);
  });
});
