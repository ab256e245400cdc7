import { afterEach, expect, it } from 'vitest';
import { resolveRoute } from '../../cloud-hub/main.js';
import { CloudHub } from '../../cloud-hub/hub.js';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { quietLogger } from '../../shared/logger.js';
import { agentOptions, connectClient, eventually, hubOptions, removePki, testPki } from '../support/chain.js';
import { describeWithMosquitto, Mosquitto } from '../support/mosquitto.js';

describeWithMosquitto('two hubs sharing one external broker', () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
    await removePki();
  });

  it('moves an agent to the second hub when its hub dies; persistent-session devices carry on with no QoS 1 loss', async () => {
    const mosquitto = await Mosquitto.start();
    cleanups.push(() => mosquitto.remove());
    const { pki } = await testPki();
    const route = () => [
      resolveRoute(
        { match: {}, backend: { brokers: [{ url: mosquitto.url, rejectUnauthorized: true }], healthCheckMs: 0 } },
        0,
        quietLogger('routes'),
      ),
    ];
    const first = await CloudHub.start(hubOptions(pki, { hubId: 'hub-a', routes: route() }));
    const second = await CloudHub.start(hubOptions(pki, { hubId: 'hub-b', routes: route() }));
    cleanups.push(() => second.close(), () => first.close());
    const agent = await EdgeAgent.start(
      agentOptions(pki, 0, {
        hubs: [
          { host: '127.0.0.1', port: first.tunnelAddress.port },
          { host: '127.0.0.1', port: second.tunnelAddress.port },
        ],
        heartbeatMs: 200,
        deadAfterMs: 1000,
        backoffInitialMs: 20,
        backoffMaxMs: 200,
      }),
    );
    cleanups.push(() => agent.close());
    await agent.pool.waitForTunnels(2);
    expect(first.stats().tunnels).toBe(2);
    expect(second.stats().tunnels).toBe(0);

    const received = new Set<number>();
    const device = await connectClient(agent.deviceAddress.port, { clientId: 'roaming-sensor', clean: false, reconnectPeriod: 100 });
    cleanups.push(() => device.endAsync(true));
    device.on('message', (_topic, payload) => received.add(Number(payload.toString())));
    await device.subscribeAsync('commands/roaming-sensor', { qos: 1 });
    let reconnectedAt = 0;
    device.on('connect', () => {
      reconnectedAt = Date.now();
    });

    const app = await connectClient(mosquitto.port, { clientId: 'fleet-manager' });
    cleanups.push(() => app.endAsync(true));
    const sent: Promise<unknown>[] = [];
    let killedAt = 0;
    for (let i = 0; i < 200; i++) {
      if (i === 60) {
        killedAt = Date.now();
        void first.close();
      }
      sent.push(app.publishAsync('commands/roaming-sensor', String(i), { qos: 1 }));
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    await Promise.all(sent);
    await eventually(() => received.size === 200, 15_000, 'all 200 commands at the device');
    await eventually(() => second.stats().tunnels === 2, 5000, 'both tunnels on the second hub');
    expect(reconnectedAt).toBeGreaterThan(killedAt);
    // Measured failover: from the hub's death to the device being back on the broker.
    console.info(`two-hub failover: device back after ${reconnectedAt - killedAt} ms`);
    expect(reconnectedAt - killedAt).toBeLessThan(5000);
  });
});
