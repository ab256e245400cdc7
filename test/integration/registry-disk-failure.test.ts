import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { agentOptions, connectClient, removePki, testPki } from '../support/chain.js';
import { HubProcess } from '../support/hub-process.js';
import { freePort } from '../support/mosquitto.js';

/**
 * Root ignores permissions, and SQLite keeps writing through its open file
 * descriptors whatever happens to the path or the directory. The process'
 * file-size limit stops root too: with RLIMIT_FSIZE lowered to 0 every write
 * to the WAL fails as on a full disk (Node ignores SIGXFSZ, so only the write
 * fails), and raising it again is the disk getting space back.
 */
function setFileSizeLimit(pid: number, soft: '0' | 'unlimited'): void {
  execFileSync('prlimit', ['--pid', String(pid), `--fsize=${soft}:`]);
}

async function metric(port: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${name} `));
  if (line === undefined) throw new Error(`no metric ${name}`);
  return Number(line.split(' ')[1]);
}

/** Polls `read` until `accept` holds; fails at once if the hub died meanwhile. */
async function untilHub<T>(hub: HubProcess, read: () => T | Promise<T>, accept: (value: T) => boolean, what: string): Promise<T> {
  const deadline = Date.now() + 8000;
  for (;;) {
    if (!hub.running) throw new Error(`cloud-hub died while waiting for ${what}:\n${hub.stderr}`);
    const value = await read();
    if (accept(value)) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(value)})`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('registry flushes on a disk that fails', () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
    await removePki();
  });

  it('keep the hub up, count the failures and write every count once the disk is back', async () => {
    const { dir: pkiDir, pki } = await testPki();
    const stateDir = mkdtempSync(join(tmpdir(), 'edgemux-registry-disk-'));
    cleanups.push(async () => rmSync(stateDir, { recursive: true, force: true }));
    const statePath = join(stateDir, 'hub.db');
    const metricsPort = await freePort();
    const hub = await HubProcess.start(['--dev-pki', pkiDir, '--state', statePath, '--metrics-port', String(metricsPort), '--open-namespaces']);
    cleanups.push(() => hub.close());
    const agent = await EdgeAgent.start(agentOptions(pki, hub.tunnelPort));
    cleanups.push(() => agent.close());
    await agent.pool.waitForTunnels(agent.pool.size);
    const device = await connectClient(agent.deviceAddress.port, { clientId: 'meter-7' });
    cleanups.push(() => device.endAsync(true));

    const db = new Database(statePath, { readonly: true });
    cleanups.push(async () => db.close());
    const row = db.prepare<[string], { msgs_in: number; msgs_out: number }>('SELECT msgs_in, msgs_out FROM devices WHERE client_id = ?');
    // CONNECT and CONNACK counted and written: the device is idle from here on.
    const before = await untilHub(hub, () => row.get('meter-7'), (found) => found !== undefined && found.msgs_in >= 1 && found.msgs_out >= 1, 'the device in the registry');

    setFileSizeLimit(hub.pid, '0');
    cleanups.push(async () => hub.running && setFileSizeLimit(hub.pid, 'unlimited'));
    const PUBLISHES = 40;
    for (let i = 0; i < PUBLISHES; i++) await device.publishAsync('meters/7', `reading-${i}`, { qos: 1 });
    await untilHub(hub, () => metric(metricsPort, 'edgemux_hub_registry_flush_failures_total'), (failures) => failures >= 2, 'two failed flushes');
    expect(await metric(metricsPort, 'edgemux_hub_registry_pending_rows')).toBeGreaterThanOrEqual(1);
    expect(row.get('meter-7')).toEqual(before);
    expect(hub.logs.filter((entry) => entry.msg === 'registry flush failed; keeping its changes and retrying')).toHaveLength(1);

    setFileSizeLimit(hub.pid, 'unlimited');
    const after = await untilHub(hub, () => row.get('meter-7')!, (found) => found.msgs_in > before!.msgs_in, 'the pending counts to be written');
    // Every PUBLISH counted once, neither lost with the failed flushes nor repeated by the retries; PUBACKs likewise.
    expect(after.msgs_in - before!.msgs_in).toBe(PUBLISHES);
    expect(after.msgs_out - before!.msgs_out).toBe(PUBLISHES);
    expect(await metric(metricsPort, 'edgemux_hub_registry_pending_rows')).toBe(0);
    expect(hub.logs.some((entry) => entry.msg === 'registry flush succeeded again')).toBe(true);

    expect(await hub.stop('SIGTERM', 3000)).toMatchObject({ code: 0 });
  });
});
