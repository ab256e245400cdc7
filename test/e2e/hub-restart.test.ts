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
