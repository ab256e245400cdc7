import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { connectClient, eventually } from '../support/chain.js';
import { freePort } from '../support/mosquitto.js';

const repo = resolve(import.meta.dirname, '../..');

function run(script: string, args: string[]): { child: ChildProcess; output: () => string } {
  let output = '';
  const child = spawn(process.execPath, [join(repo, script), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  return { child, output: () => output };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

describe('edge-agent --workers', () => {
  const dir = mkdtempSync(join(tmpdir(), 'edgemux-workers-'));
  const children: ChildProcess[] = [];
  afterAll(async () => {
    for (const child of children.reverse()) await stop(child);
    rmSync(dir, { recursive: true, force: true });
  });

  it('shares the device port between worker processes, each with its own tunnels', async () => {
    const [tunnelPort, appPort, devicePort, hubMetricsPort, agentMetricsPort] = [
      await freePort(), await freePort(), await freePort(), await freePort(), await freePort(),
    ];
    const hub = run('dist/cloud-hub/cli.js', [
      '--dev-pki', join(dir, 'pki'), '--tunnel-host', '127.0.0.1', '--tunnel-port', String(tunnelPort),
      '--app-host', '127.0.0.1', '--app-port', String(appPort), '--metrics-port', String(hubMetricsPort), '--log-level', 'info',
      '--open-namespaces',
    ]);
    children.push(hub.child);
    await eventually(() => hub.output().includes('hub listening'), 15_000, 'hub to listen');
    const agent = run('dist/edge-agent/cli.js', [
      '--dev-pki', join(dir, 'pki'), '--hub', `127.0.0.1:${tunnelPort}`, '--host', '127.0.0.1', '--port', String(devicePort),
      '--workers', '2', '--tunnels', '2', '--metrics-port', String(agentMetricsPort), '--log-level', 'info',
    ]);
    children.push(agent.child);
    // Two workers with two tunnels each: four tunnels from one agent identity.
    await eventually(() => (hub.output().match(/agent tunnel up/g) ?? []).length === 4, 15_000, 'four tunnels');

    const app = await connectClient(appPort, { clientId: 'workers-app' });
    await app.subscribeAsync('w/#', { qos: 1 });
    const seen = new Set<string>();
    app.on('message', (topic) => seen.add(topic));
    const devices = await Promise.all(Array.from({ length: 40 }, (_, i) => connectClient(devicePort, { clientId: `w-${i}` })));
    await Promise.all(devices.map((device, i) => device.publishAsync(`w/${i}`, 'x', { qos: 1 })));
    await eventually(() => seen.size === 40, 5000, 'all 40 publishes');

    const hubMetrics = await (await fetch(`http://127.0.0.1:${hubMetricsPort}/metrics`)).text();
    expect(hubMetrics).toMatch(/^edgemux_hub_sessions 40$/m);
    expect(hubMetrics).toMatch(/^edgemux_hub_tunnels 4$/m);
    const hubHealth = await fetch(`http://127.0.0.1:${hubMetricsPort}/healthz`);
    expect(hubHealth.status).toBe(200);
    expect(await hubHealth.json()).toMatchObject({ healthy: true, sessions: 40, agents: 1 });
    const agentHealth = await fetch(`http://127.0.0.1:${agentMetricsPort}/healthz`);
    expect(agentHealth.status).toBe(200);
    expect(await agentHealth.json()).toMatchObject({ healthy: true, tunnelsUp: 2 });
    const agentMetrics = await (await fetch(`http://127.0.0.1:${agentMetricsPort}/metrics`)).text();
    expect(agentMetrics).toMatch(/^edgemux_agent_tunnels_up\{worker="[01]"\} 2$/m);
    for (const device of devices) device.end(true);
    app.end(true);
    const workerPids = new Set([...agent.output().matchAll(/"pid":(\d+)[^\n]*"msg":"agent listening"/g)].map((match) => match[1]));
    expect(workerPids.size).toBe(2);
  });
});
