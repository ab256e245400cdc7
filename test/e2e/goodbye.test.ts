import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { join, resolve } from 'node:path';
import type { IPublishPacket, MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { CloudHub } from '../../cloud-hub/hub.js';
import { resolveRoute } from '../../cloud-hub/main.js';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { quietLogger } from '../../shared/logger.js';
import { agentOptions, connectClient, eventually, hubOptions, removePki, testPki } from '../support/chain.js';
import { HoldRelay } from '../support/hold-relay.js';
import { freePort, itWithMosquitto, Mosquitto } from '../support/mosquitto.js';

const repo = resolve(import.meta.dirname, '../..');
/** Far longer than any test here waits: a session can only end in time because of the goodbye. */
const LONG_GRACE_MS = 60_000;

function route(mosquitto: Mosquitto) {
  return [
    resolveRoute({ match: {}, backend: { brokers: [{ url: mosquitto.url, rejectUnauthorized: true }], healthCheckMs: 0 } }, 0, quietLogger('routes')),
  ];
}

function willOf(clientId: string) {
  return { topic: `wills/${clientId}`, payload: Buffer.from(`${clientId} gone`), qos: 1 as const, retain: false };
}

/** Collects the will topics an application sees. */
async function willWatcher(port: number, cleanups: (() => Promise<unknown>)[]): Promise<Set<string>> {
  const app = await connectClient(port, { clientId: `will-watcher-${Math.random().toString(16).slice(2)}` });
  cleanups.push(() => app.endAsync(true));
  const wills = new Set<string>();
  app.on('message', (topic: string, _payload: Buffer, _packet: IPublishPacket) => wills.add(topic));
  await app.subscribeAsync('wills/#', { qos: 1 });
  return wills;
}

function closed(client: MqttClient): Promise<void> {
  return new Promise((resolve) => client.once('close', () => resolve()));
}

function disconnectReason(client: MqttClient): Promise<number | undefined> {
  return new Promise((resolve) => client.once('disconnect', (packet) => resolve(packet.reasonCode)));
}

describe('a graceful stop says goodbye', () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
    await removePki();
  });

  itWithMosquitto('SIGTERM on the agent ends its sessions at the hub at once: wills published, MQTT 5 devices told 0x8B', async () => {
    const mosquitto = await Mosquitto.start();
    cleanups.push(() => mosquitto.remove());
    const { dir, pki } = await testPki();
    const hub = await CloudHub.start(hubOptions(pki, { resumeGraceMs: LONG_GRACE_MS, routes: route(mosquitto) }));
    cleanups.push(() => hub.close());
    const devicePort = await freePort();
    const config = join(dir, 'agent-goodbye.yaml');
    writeFileSync(
      config,
      [
        `devPki: ${dir}`,
        `hubs: ['127.0.0.1:${hub.tunnelAddress.port}']`,
        `listen: { host: 127.0.0.1, port: ${devicePort} }`,
        `resumeGraceMs: ${LONG_GRACE_MS}`,
        'logLevel: warn',
        '',
      ].join('\n'),
    );
    const agent: ChildProcess = spawn(process.execPath, [join(repo, 'dist/edge-agent/cli.js'), '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    agent.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    agent.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => agent.once('exit', (code) => resolve(code)));
    cleanups.push(async () => {
      if (agent.exitCode === null) agent.kill('SIGKILL');
    });
    await eventually(() => hub.stats().tunnels === 2, 10_000, `agent tunnels up (agent output: ${output})`);

    const wills = await willWatcher(mosquitto.port, cleanups);
    const legacy = await connectClient(devicePort, { clientId: 'legacy-sensor', will: willOf('legacy-sensor') });
    const modern = await connectClient(devicePort, { clientId: 'modern-sensor', protocolVersion: 5, will: willOf('modern-sensor') });
    cleanups.push(async () => [legacy, modern].forEach((client) => client.end(true)));
    expect(hub.stats().sessions).toBe(2);
    const told = disconnectReason(modern);
    const legacyClosed = closed(legacy);

    const stoppedAt = Date.now();
    agent.kill('SIGTERM');
    expect(await told).toBe(0x8b);
    await legacyClosed;
    await eventually(() => wills.size === 2, 5000, 'both wills, published by Mosquitto');
    const willsAfterMs = Date.now() - stoppedAt;
    expect(await exited).toBe(0);
    expect([...wills].sort()).toEqual(['wills/legacy-sensor', 'wills/modern-sensor']);
    await eventually(() => hub.stats().sessions === 0 && hub.stats().tunnels === 0, 2000, 'no session or tunnel left at the hub');
    console.info(`agent SIGTERM: wills at the cloud after ${willsAfterMs} ms`);
  });

  it("ends sessions the hub holds detached when the agent's GOODBYE arrives on another tunnel", async () => {
    const { pki } = await testPki();
    const hub = await CloudHub.start(hubOptions(pki, { resumeGraceMs: LONG_GRACE_MS }));
    cleanups.push(() => hub.close());
    const relay = await HoldRelay.start(hub.tunnelAddress.port);
    cleanups.push(() => relay.close());
    const agent = await EdgeAgent.start(
      agentOptions(pki, relay.port, { tunnels: 2, resumeGraceMs: LONG_GRACE_MS, heartbeatMs: 500, deadAfterMs: 30_000 }),
    );
    let agentClosed = false;
    cleanups.push(async () => agentClosed || agent.close());
    await agent.pool.waitForTunnels(2);
    const wills = await willWatcher(hub.appAddress.port, cleanups);
    const device = await connectClient(agent.deviceAddress.port, { clientId: 'far-sensor', will: willOf('far-sensor') });
    cleanups.push(async () => device.end(true));

    // The hub loses the device's tunnel; the agent does not notice (its dead-peer limit is long).
    const carrier = agent.pool.pick('far-sensor')!.tunnel;
    relay.sever(relay.byAgentPort((carrier.socket as Socket).localPort));
    await eventually(() => hub.stats().detached === 1, 5000, 'the session detached at the hub');
    expect(agent.stats().detached).toBe(0);

    const stoppedAt = Date.now();
    const stopping = agent.close().then(() => (agentClosed = true));
    await eventually(() => wills.has('wills/far-sensor'), 5000, 'the will of the detached session');
    console.info(`agent stop with a detached session: will after ${Date.now() - stoppedAt} ms`);
    expect(hub.stats().sessions).toBe(0);
    await stopping;
  });

  itWithMosquitto('a hub that stops gracefully makes agents close its devices at once, MQTT 5 devices with 0x8B', async () => {
    const mosquitto = await Mosquitto.start();
    cleanups.push(() => mosquitto.remove());
    const { pki } = await testPki();
    const hub = await CloudHub.start(hubOptions(pki, { resumeGraceMs: LONG_GRACE_MS, routes: route(mosquitto) }));
    let hubClosed = false;
    cleanups.push(async () => hubClosed || hub.close());
    const agent = await EdgeAgent.start(agentOptions(pki, hub.tunnelAddress.port, { resumeGraceMs: LONG_GRACE_MS }));
    cleanups.push(() => agent.close());
    await agent.pool.waitForTunnels(2);
    const legacy = await connectClient(agent.deviceAddress.port, { clientId: 'legacy-sensor' });
    const modern = await connectClient(agent.deviceAddress.port, { clientId: 'modern-sensor', protocolVersion: 5 });
    cleanups.push(async () => [legacy, modern].forEach((client) => client.end(true)));
    const told = disconnectReason(modern);
    const bothClosed = Promise.all([closed(legacy), closed(modern)]);

    const stoppedAt = Date.now();
    await hub.close();
    hubClosed = true;
    expect(await told).toBe(0x8b);
    await bothClosed;
    console.info(`hub stop: devices closed by the agent after ${Date.now() - stoppedAt} ms`);
    await eventually(() => agent.stats().devices === 0, 2000, 'no device left at the agent');
    expect(agent.stats().detached).toBe(0);
  });
});
