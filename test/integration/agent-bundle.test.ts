import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CloudHub } from '../../cloud-hub/hub.js';
import { connectClient, eventually, hubOptions, removePki, testPki } from '../support/chain.js';
import { freePort } from '../support/mosquitto.js';

const repo = resolve(import.meta.dirname, '../..');

/**
 * The single-file agent is what an edge box gets: copied alone into an empty
 * directory, with no node_modules anywhere above it, it must carry traffic.
 */
describe('the edge-agent bundle', () => {
  let box: string;
  let hub: CloudHub;
  let agent: ChildProcess | null = null;

  beforeAll(() => {
    execFileSync('npm', ['run', '--silent', 'bundle'], { cwd: repo, stdio: 'ignore' });
  }, 60_000);

  afterAll(async () => {
    agent?.kill('SIGKILL');
    await hub?.close();
    if (box !== undefined) rmSync(box, { recursive: true, force: true });
    await removePki();
  });

  it('runs from an empty directory and carries a message both ways', async () => {
    const { pki } = await testPki();
    hub = await CloudHub.start(hubOptions(pki));
    box = mkdtempSync(join(tmpdir(), 'edgemux-box-'));
    copyFileSync(join(repo, 'dist/bundle/edge-agent.mjs'), join(box, 'edge-agent.mjs'));
    writeFileSync(join(box, 'ca.pem'), pki.ca);
    writeFileSync(join(box, 'agent.pem'), pki.agents['agent-1'].cert);
    writeFileSync(join(box, 'agent.key'), pki.agents['agent-1'].key, { mode: 0o600 });
    const devicePort = await freePort();
    agent = spawn(
      process.execPath,
      [
        'edge-agent.mjs',
        '--agent-id', 'agent-1',
        '--host', '127.0.0.1',
        '--port', String(devicePort),
        '--hub', `127.0.0.1:${hub.tunnelAddress.port}`,
        '--ca', 'ca.pem', '--cert', 'agent.pem', '--key', 'agent.key',
      ],
      { cwd: box, stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '' } },
    );
    let output = '';
    agent.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    agent.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    await eventually(() => hub.stats().tunnels === 2, 10_000, `two tunnels from the bundle (output: ${output})`);

    const app = await connectClient(hub.appAddress.port, { clientId: 'bundle-app' });
    const device = await connectClient(devicePort, { clientId: 'bundle-device' });
    try {
      await app.subscribeAsync('box/up', { qos: 1 });
      await device.subscribeAsync('box/down', { qos: 1 });
      const up = new Promise<string>((resolveUp) => app.on('message', (_topic, payload) => resolveUp(payload.toString())));
      const down = new Promise<string>((resolveDown) => device.on('message', (_topic, payload) => resolveDown(payload.toString())));
      await device.publishAsync('box/up', 'from the box', { qos: 1 });
      expect(await up).toBe('from the box');
      await app.publishAsync('box/down', 'to the box', { qos: 1 });
      expect(await down).toBe('to the box');
    } finally {
      device.end(true);
      app.end(true);
    }
    // Nothing native: the bundle must not have reached for a module beside it.
    expect(readFileSync(join(box, 'edge-agent.mjs'), 'utf8')).not.toMatch(/better-sqlite3/);
  });
});
