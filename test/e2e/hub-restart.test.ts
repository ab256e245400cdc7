import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CloudHub } from '../../cloud-hub/hub.js';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { agentOptions, connectClient, eventually, hubOptions, removePki, testPki } from '../support/chain.js';

describe('hub restart', () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
    await removePki();
  });

  it('disconnects clean-session devices so they reconnect cleanly, and leaves no zombie sessions', async () => {
    const { pki } = await testPki();
    let hub = await CloudHub.start(hubOptions(pki));
    const tunnelPort = hub.tunnelAddress.port;
    const appPort = hub.appAddress.port;
    cleanups.push(() => hub.close());
    const agent = await EdgeAgent.start(agentOptions(pki, tunnelPort, { heartbeatMs: 200, deadAfterMs: 1000 }));
    cleanups.push(() => agent.close());
    await agent.pool.waitForTunnels(2);

    const devices = await Promise.all(
      Array.from({ length: 20 }, (_, i) => connectClient(agent.deviceAddress.port, { clientId: `restart-${i}`, reconnectPeriod: 100 })),
    );
    cleanups.push(async () => devices.forEach((device) => device.end(true)));
    let reconnects = 0;
    for (const device of devices) device.on('connect', () => reconnects++);

    await hub.close();
    hub = await CloudHub.start(hubOptions(pki, { tunnelPort, appPort }));
    await eventually(() => reconnects === 20, 10_000, 'every device to reconnect through the new hub');
    await eventually(() => hub.stats().sessions === 20 && agent.stats().detached === 0, 5000, 'one session per device');
    expect(agent.stats().devices).toBe(20);

    const app = await connectClient(appPort, { clientId: 'after-restart' });
    cleanups.push(() => app.endAsync(true));
    await app.subscribeAsync('after/#', { qos: 1 });
    const got = new Promise<string>((resolve) => app.once('message', (_topic, payload) => resolve(payload.toString())));
    await devices[7].publishAsync('after/7', 'back', { qos: 1 });
    expect(await got).toBe('back');
  });
});

describe('hub restart with durable state', () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
    await removePki();
  });

  it('keeps queued QoS 1 messages of persistent sessions and retained messages across a hub restart', async () => {
    const { pki } = await testPki();
    const dir = mkdtempSync(join(tmpdir(), 'edgemux-state-'));
    cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
    const statePath = join(dir, 'hub.db');
    let hub = await CloudHub.start(hubOptions(pki, { statePath }));
    const tunnelPort = hub.tunnelAddress.port;
    const appPort = hub.appAddress.port;
    cleanups.push(() => hub.close());
    const agent = await EdgeAgent.start(agentOptions(pki, tunnelPort, { heartbeatMs: 200, deadAfterMs: 1000 }));
    cleanups.push(() => agent.close());
    await agent.pool.waitForTunnels(2);

    const subscriber = await connectClient(agent.deviceAddress.port, { clientId: 'durable-sub', clean: false });
    await subscriber.subscribeAsync('orders/#', { qos: 1 });
    await subscriber.endAsync();
    const app = await connectClient(appPort, { clientId: 'order-desk' });
    for (let i = 0; i < 30; i++) await app.publishAsync('orders/new', String(i), { qos: 1 });
    await app.publishAsync('config/site', 'v7', { qos: 1, retain: true });
    await app.endAsync();

    await hub.close();
    hub = await CloudHub.start(hubOptions(pki, { statePath, tunnelPort, appPort }));
    await eventually(() => agent.stats().tunnelsUp === 2, 10_000, 'tunnels back');

    const received: string[] = [];
    const back = await connectClient(agent.deviceAddress.port, { clientId: 'durable-sub', clean: false });
    cleanups.push(() => back.endAsync(true));
    back.on('message', (topic, payload) => received.push(`${topic}=${payload.toString()}`));
    await eventually(() => received.length === 30, 10_000, 'the 30 queued messages');
    expect(received).toEqual(Array.from({ length: 30 }, (_, i) => `orders/new=${i}`));

    const late = await connectClient(agent.deviceAddress.port, { clientId: 'late-reader' });
    cleanups.push(() => late.endAsync(true));
    const retained = new Promise<string>((resolve) => late.once('message', (_topic, payload) => resolve(payload.toString())));
    await late.subscribeAsync('config/site', { qos: 1 });
    expect(await retained).toBe('v7');

    const devices = hub.registry!.devices().map((row) => row.client_id).sort();
    expect(devices).toEqual(['durable-sub', 'late-reader']);
    expect(hub.registry!.agents()).toMatchObject([{ agent_id: 'agent-1' }]);
  });
});
