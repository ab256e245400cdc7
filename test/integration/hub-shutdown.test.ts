import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { agentOptions, connectClient, eventually, removePki, testPki } from '../support/chain.js';
import { HubProcess } from '../support/hub-process.js';
import { itWithMosquitto } from '../support/mosquitto.js';

/** Docker waits 10 s and systemd 90 s before SIGKILL; a stop should need a small part of that. */
const STOP_BOUND_MS = 3000;

describe('cloud-hub stops on SIGTERM', () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
    await removePki();
  });

  itWithMosquitto('with an application connected: closes it, flushes its state file and exits 0 within a bound', async () => {
    const { dir: pkiDir, pki } = await testPki();
    const stateDir = mkdtempSync(join(tmpdir(), 'edgemux-hub-stop-'));
    cleanups.push(async () => rmSync(stateDir, { recursive: true, force: true }));
    const statePath = join(stateDir, 'hub.db');
    const hub = await HubProcess.start(['--dev-pki', pkiDir, '--state', statePath, '--open-namespaces']);
    cleanups.push(() => hub.close());

    const agent = await EdgeAgent.start(agentOptions(pki, hub.tunnelPort));
    cleanups.push(() => agent.close());
    await agent.pool.waitForTunnels(agent.pool.size);

    // A real application holding a persistent session on the app port.
    const app: ChildProcess = spawn(
      'mosquitto_sub',
      ['-h', '127.0.0.1', '-p', String(hub.appPort), '-i', 'durable-app', '-c', '-q', '1', '-t', 'plant/#', '-v'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    cleanups.push(async () => app.kill('SIGKILL'));
    let appOutput = '';
    app.stdout!.on('data', (chunk: Buffer) => (appOutput += chunk.toString()));

    const device = await connectClient(agent.deviceAddress.port, { clientId: 'meter-1' });
    cleanups.push(() => device.endAsync(true));
    // Retained, so the application gets it whether its SUBSCRIBE came first or not.
    await device.publishAsync('plant/meter-1', 'reading-1', { qos: 1, retain: true });
    await eventually(() => appOutput.includes('plant/meter-1 reading-1'), 5000, 'the application to receive the reading');

    const exit = await hub.stop('SIGTERM', STOP_BOUND_MS);
    expect(exit).toMatchObject({ code: 0, signal: null });
    expect(exit.elapsedMs).toBeLessThan(STOP_BOUND_MS);

    // A closed SQLite connection checkpoints its WAL into the database and removes it.
    expect(existsSync(`${statePath}-wal`)).toBe(false);
    const db = new Database(statePath, { readonly: true });
    cleanups.push(async () => db.close());
    const subscriptions = db.prepare('SELECT topic FROM aedes_subscriptions WHERE client_id = ?').all('durable-app');
    expect(subscriptions).toEqual([{ topic: 'plant/#' }]);
    expect(db.prepare('SELECT topic FROM aedes_retained').all()).toEqual([{ topic: 'plant/meter-1' }]);
    // The device's disconnect happens during the stop: only a flush at the stop writes it.
    const meter = db.prepare('SELECT connected_since, msgs_in FROM devices WHERE client_id = ?').get('meter-1') as
      | { connected_since: number | null; msgs_in: number }
      | undefined;
    expect(meter?.connected_since).toBeNull();
    expect(meter?.msgs_in).toBeGreaterThanOrEqual(1);
  });
});
