import type { MqttClient } from 'mqtt';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { CloudApp } from '../../firmware-sim/cloud-app.js';
import { DeviceFleet } from '../../firmware-sim/device-fleet.js';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { type Chain, agentOptions, connectClient, eventually, removePki, startChain } from '../support/chain.js';

function nextMessage(client: MqttClient, topic: string): Promise<Buffer> {
  return new Promise((resolve) => {
    const onMessage = (received: string, payload: Buffer): void => {
      if (received !== topic) return;
      client.off('message', onMessage);
      resolve(payload);
    };
    client.on('message', onMessage);
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('tunnel loss is invisible to devices and broker', () => {
  let chain: Chain;
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    await chain.close();
  });
  afterAll(removePki);

  it('survives 10 tunnel breaks, half of them half-open: no disconnect, loss, duplicate or reordering', async () => {
    chain = await startChain({
      viaProxy: true,
      hub: { heartbeatMs: 100, deadAfterMs: 600 },
      agent: { heartbeatMs: 100, deadAfterMs: 600, backoffInitialMs: 20, backoffMaxMs: 200 },
    });
    const app = await CloudApp.connect({ host: '127.0.0.1', port: chain.appPort, clientId: 'chaos-app' });
    cleanups.push(() => app.close());
    const fleet = new DeviceFleet({ port: chain.devicePort, devices: 50, ratePerDevice: 10, qos: 1, keepaliveSeconds: 30 });
    cleanups.push(() => fleet.stop());
    await fleet.start();

    const proxy = chain.proxy!;
    let breaks = 0;
    while (breaks < 10) {
      await sleep(400);
      const outcome = proxy.breakOne(breaks % 2 === 0 ? 1 : 0);
      if (outcome !== null) breaks++;
    }
    expect(proxy.kills).toBe(5);
    expect(proxy.freezes).toBe(5);

    fleet.pausePublishing();
    await eventually(() => {
      const stats = fleet.stats();
      return stats.acked === stats.sent && app.sequences.delivered >= stats.sent;
    }, 20_000, 'every publish to be acknowledged and delivered');

    const stats = fleet.stats();
    expect(stats.sent).toBeGreaterThan(1500);
    expect(stats.disconnects).toBe(0);
    expect(stats.connectFailures).toBe(0);
    expect(app.sequences.delivered).toBe(stats.sent);
    expect(app.sequences.duplicates).toBe(0);
    expect(app.sequences.outOfOrder).toBe(0);
    expect(app.sequences.gaps).toBe(0);
    expect(chain.agent.stats().deviceDisconnects).toBe(0);
  });

  it('keeps the WAN silent for 1000 idle devices: only tunnel heartbeats cross it', async () => {
    const heartbeatMs = 500;
    chain = await startChain({ hub: { heartbeatMs }, agent: { heartbeatMs } });
    const keepaliveSeconds = 1;
    const fleet = new DeviceFleet({ port: chain.devicePort, devices: 1000, ratePerDevice: 0, keepaliveSeconds, connectConcurrency: 200 });
    cleanups.push(() => fleet.stop());
    await fleet.start();
    expect(fleet.stats().connected).toBe(1000);
    await sleep(300);

    const before = chain.agent.pool.trafficTotals();
    const windowMs = 2 * keepaliveSeconds * 1000 + 500;
    await sleep(windowMs);
    const after = chain.agent.pool.trafficTotals();

    // Each device pinged at least twice in the window, all answered at the agent.
    expect(after.dataFramesIn - before.dataFramesIn).toBe(0);
    expect(after.dataFramesOut - before.dataFramesOut).toBe(0);
    expect(after.ackFramesOut - before.ackFramesOut).toBe(0);
    const heartbeats = (2 * 2 * windowMs) / heartbeatMs; // 2 tunnels, PING each way
    expect(after.controlFramesIn - before.controlFramesIn).toBeLessThanOrEqual(heartbeats + 4);
    // The broker side stayed alive on the devices' behalf through two keepalive periods.
    expect(fleet.stats().connected).toBe(1000);
    expect(fleet.stats().disconnects).toBe(0);
    expect(chain.hub.stats().sessions).toBe(1000);
  });

  it('lets a device on another agent take over the client ID; the old connection is closed', async () => {
    chain = await startChain();
    const second = await EdgeAgent.start(agentOptions(chain.pki, chain.hub.tunnelAddress.port, { agentId: 'agent-2' }));
    cleanups.push(() => second.close());
    await second.pool.waitForTunnels(2);
    const first = await chain.device({ clientId: 'roamer' });
    const firstClosed = new Promise<void>((resolve) => first.once('close', () => resolve()));
    const viaSecond = await connectClient(second.deviceAddress.port, { clientId: 'roamer' });
    cleanups.push(() => viaSecond.endAsync(true));
    await firstClosed;
    const app = await chain.app({ clientId: 'roam-watcher' });
    await app.subscribeAsync('roam/#', { qos: 1 });
    const message = nextMessage(app, 'roam/x');
    await viaSecond.publishAsync('roam/x', 'from agent-2', { qos: 1 });
    expect((await message).toString()).toBe('from agent-2');
    await eventually(() => chain.hub.stats().sessions === 1, 3000, 'the old session to end');
  });

  it('closes the device and publishes its will when the stream cannot resume within the grace period', async () => {
    chain = await startChain({
      viaProxy: true,
      hub: { heartbeatMs: 100, deadAfterMs: 400, resumeGraceMs: 800 },
      agent: { heartbeatMs: 100, deadAfterMs: 400, resumeGraceMs: 800, tunnels: 1 },
    });
    const app = await chain.app({ clientId: 'grace-watcher' });
    await app.subscribeAsync('wills/#', { qos: 1 });
    const device = await chain.device({ clientId: 'stranded', will: { topic: 'wills/stranded', payload: Buffer.from('lost'), qos: 1, retain: false } });
    const deviceClosed = new Promise<void>((resolve) => device.once('close', () => resolve()));
    const will = nextMessage(app, 'wills/stranded');
    // The hub becomes unreachable: the relay stops accepting and its live link is cut.
    await chain.proxy!.close();
    const started = Date.now();
    await deviceClosed;
    expect(Date.now() - started).toBeGreaterThanOrEqual(700);
    expect((await will).toString()).toBe('lost');
    await eventually(() => chain.hub.stats().sessions === 0, 3000, 'no session left on the hub');
  });

  it('bounds memory while a device refuses to read, and only that device stalls', async () => {
    chain = await startChain({ hub: { maxQueuedBytes: 2 * 1024 * 1024 } });
    const app = await chain.app({ clientId: 'flooder' });
    const stubborn = await connectClient(chain.devicePort, { clientId: 'stubborn' });
    cleanups.push(() => stubborn.endAsync(true));
    await stubborn.subscribeAsync('flood/#', { qos: 1 });
    const healthy = await chain.device({ clientId: 'healthy' });
    await healthy.subscribeAsync('ping/healthy', { qos: 1 });
    (stubborn.stream as import('node:net').Socket).pause();

    const hubSession = [...chain.hub.sessions].find((session) => session.clientId === 'stubborn')!;
    const rssBefore = process.memoryUsage().rss;
    const payload = Buffer.alloc(1024, 7);
    let maxReplay = 0;
    for (let i = 0; i < 40; i++) {
      for (let j = 0; j < 256; j++) app.publish('flood/x', payload, { qos: 1 });
      await sleep(20);
      maxReplay = Math.max(maxReplay, hubSession.stream.replayBytes);
    }
    // 10 MiB offered to a device that reads nothing.
    const healthyGot = nextMessage(healthy, 'ping/healthy');
    await app.publishAsync('ping/healthy', 'still flowing', { qos: 1 });
    expect((await healthyGot).toString()).toBe('still flowing');

    expect(maxReplay).toBeLessThanOrEqual(64 * 1024 + 1024 * 1024);
    const rssGrowth = process.memoryUsage().rss - rssBefore;
    expect(rssGrowth).toBeLessThan(64 * 1024 * 1024);
    // Past its queue limit the stubborn device is cut off as a slow consumer; the healthy one is not.
    await eventually(() => hubSession.state === 'closed', 10_000, 'slow consumer to be cut off');
    expect(healthy.connected).toBe(true);
    expect(chain.hub.counters.slowConsumerCutoffs).toBe(1);
  });

  it('a device that stops reading for a while gets everything, in order, once it reads again', async () => {
    chain = await startChain();
    const app = await chain.app({ clientId: 'batch-sender' });
    const slow = await connectClient(chain.devicePort, { clientId: 'slow-reader' });
    cleanups.push(() => slow.endAsync(true));
    await slow.subscribeAsync('batch/#', { qos: 1 });
    const received: number[] = [];
    slow.on('message', (_topic, payload) => received.push(payload.readUInt32BE(0)));
    const socket = slow.stream as import('node:net').Socket;
    socket.pause();

    // 1.5 MiB: far past the stream's credit window and the sockets' buffers, under the hub's queue limit.
    const count = 1500;
    const payload = Buffer.alloc(1024, 1);
    for (let i = 0; i < count; i++) {
      payload.writeUInt32BE(i, 0);
      app.publish('batch/x', Buffer.from(payload), { qos: 1 });
    }
    await sleep(1000);
    expect(received.length).toBe(0);
    const agentStream = [...chain.agent.devices].find((device) => device.clientId === 'slow-reader')!.stream!;
    expect(agentStream.state).toBe('open');

    socket.resume();
    await eventually(() => received.length >= count, 10_000, `all ${count} messages (got ${received.length})`);
    expect(received).toEqual(Array.from({ length: count }, (_, i) => i));
    expect(slow.connected).toBe(true);
  });
});
