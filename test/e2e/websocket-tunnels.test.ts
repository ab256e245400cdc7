import type { MqttClient } from 'mqtt';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type tls from 'node:tls';
import { type ClientOptions, WebSocket } from 'ws';
import { CloudApp } from '../../firmware-sim/cloud-app.js';
import { DeviceFleet } from '../../firmware-sim/device-fleet.js';
import { CloudHub } from '../../cloud-hub/hub.js';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { DEFAULT_WS_PATH } from '../../shared/transports/tunnel-port.js';
import { type Chain, agentOptions, eventually, hubOptions, removePki, startChain, testPki } from '../support/chain.js';

function nextMessage(client: MqttClient, topic: string): Promise<{ payload: Buffer; qos: number }> {
  return new Promise((resolve) => {
    const onMessage = (received: string, payload: Buffer, packet: { qos: number }): void => {
      if (received !== topic) return;
      client.off('message', onMessage);
      resolve({ payload, qos: packet.qos });
    };
    client.on('message', onMessage);
  });
}

/** A WebSocket client holding a valid agent certificate, asking for HTTP by ALPN as the agent does. */
function certifiedWebSocket(chain: Chain, path: string): WebSocket {
  const options: ClientOptions & tls.ConnectionOptions = {
    ca: chain.pki.ca,
    cert: chain.pki.agents['agent-2'].cert,
    key: chain.pki.agents['agent-2'].key,
    ALPNProtocols: ['http/1.1'],
    perMessageDeflate: false,
  };
  return new WebSocket(`wss://127.0.0.1:${chain.hub.tunnelAddress.port}${path}`, options);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('tunnels as WebSocket over TLS', () => {
  let chain: Chain | null = null;
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    await chain?.close();
    chain = null;
  });
  afterAll(removePki);

  it('carries QoS 1 from device to application and back, on the same port as raw TLS tunnels', async () => {
    chain = await startChain({ agent: { transports: ['websocket'] } });
    expect(chain.agent.pool.tunnelsByTransport()).toEqual({ tls: 0, websocket: 2, proxy: 0 });
    // A raw TLS agent on the very same port is taken too.
    const raw = await EdgeAgent.start(agentOptions(chain.pki, chain.hub.tunnelAddress.port, { agentId: 'agent-2', transports: ['tls'] }));
    cleanups.push(() => raw.close());
    await raw.pool.waitForTunnels(2);
    expect(raw.pool.tunnelsByTransport()).toEqual({ tls: 2, websocket: 0, proxy: 0 });
    expect(chain.hub.stats().tunnels).toBe(4);

    const app = await chain.app({ clientId: 'ws-app' });
    const device = await chain.device({ clientId: 'ws-device' });
    await app.subscribeAsync('telemetry/#', { qos: 1 });
    await device.subscribeAsync('commands/ws-device', { qos: 1 });
    const up = nextMessage(app, 'telemetry/ws-device');
    await device.publishAsync('telemetry/ws-device', 'up', { qos: 1 });
    expect(await up).toEqual({ payload: Buffer.from('up'), qos: 1 });
    const down = nextMessage(device, 'commands/ws-device');
    await app.publishAsync('commands/ws-device', 'down', { qos: 1 });
    expect(await down).toEqual({ payload: Buffer.from('down'), qos: 1 });
    // Bytes crossed the agent's WebSocket tunnels both ways.
    const traffic = chain.agent.pool.trafficTotals();
    expect(traffic.dataFramesOut).toBeGreaterThan(0);
    expect(traffic.dataFramesIn).toBeGreaterThan(0);
  });

  it('survives 8 tunnel breaks, half of them half-open: no disconnect, loss, duplicate or reordering', async () => {
    chain = await startChain({
      viaProxy: true,
      hub: { heartbeatMs: 100, deadAfterMs: 600 },
      agent: { transports: ['websocket'], heartbeatMs: 100, deadAfterMs: 600, backoffInitialMs: 20, backoffMaxMs: 200 },
    });
    const app = await CloudApp.connect({ host: '127.0.0.1', port: chain.appPort, clientId: 'ws-chaos-app' });
    cleanups.push(() => app.close());
    const fleet = new DeviceFleet({ port: chain.devicePort, devices: 40, ratePerDevice: 10, qos: 1, keepaliveSeconds: 30 });
    cleanups.push(() => fleet.stop());
    await fleet.start();

    const proxy = chain.proxy!;
    let breaks = 0;
    while (breaks < 8) {
      await sleep(400);
      if (proxy.breakOne(breaks % 2 === 0 ? 1 : 0) !== null) breaks++;
    }
    fleet.pausePublishing();
    await eventually(() => {
      const stats = fleet.stats();
      return stats.acked === stats.sent && app.sequences.delivered >= stats.sent;
    }, 20_000, 'every publish to be acknowledged and delivered');

    const stats = fleet.stats();
    expect(stats.sent).toBeGreaterThan(1000);
    expect(stats.disconnects).toBe(0);
    expect(app.sequences.delivered).toBe(stats.sent);
    expect(app.sequences.duplicates).toBe(0);
    expect(app.sequences.outOfOrder).toBe(0);
    expect(app.sequences.gaps).toBe(0);
    expect(chain.agent.stats().deviceDisconnects).toBe(0);
    // A break that froze a redial in its handshake holds that slot for the handshake timeout (10 s).
    await eventually(() => chain!.agent.pool.tunnelsByTransport().websocket === 2, 15_000, 'both tunnels back on WebSocket');
  });

  it('a device that stops reading gets everything, in order, once it reads again: the WebSocket tunnel holds back, it does not buffer', async () => {
    chain = await startChain({ agent: { transports: ['websocket'], tunnels: 1 } });
    const app = await chain.app({ clientId: 'ws-batch-sender' });
    const slow = await chain.device({ clientId: 'ws-slow-reader' });
    await slow.subscribeAsync('batch/#', { qos: 1 });
    const received: number[] = [];
    slow.on('message', (_topic, payload) => received.push(payload.readUInt32BE(0)));
    const socket = slow.stream as import('node:net').Socket;
    socket.pause();

    const count = 1500;
    const payload = Buffer.alloc(1024, 1);
    for (let i = 0; i < count; i++) {
      payload.writeUInt32BE(i, 0);
      app.publish('batch/x', Buffer.from(payload), { qos: 1 });
    }
    await sleep(1000);
    expect(received.length).toBe(0);
    // What waits is bounded by the stream's credit window at the hub, not held in the tunnel.
    const session = [...chain.hub.sessions].find((candidate) => candidate.clientId === 'ws-slow-reader')!;
    expect(session.stream.replayBytes).toBeLessThanOrEqual(64 * 1024 + 2048);

    socket.resume();
    await eventually(() => received.length >= count, 10_000, `all ${count} messages (got ${received.length})`);
    expect(received).toEqual(Array.from({ length: count }, (_, i) => i));
  });

  it('is not offered by a hub that takes raw TLS tunnels only', async () => {
    const { pki } = await testPki();
    const hub = await CloudHub.start(hubOptions(pki, { webSocketPath: null }));
    cleanups.push(() => hub.close());
    const agent = await EdgeAgent.start(agentOptions(pki, hub.tunnelAddress.port, { transports: ['websocket'], tunnels: 1 }));
    cleanups.push(() => agent.close());
    await sleep(1000);
    expect(agent.pool.readyCount).toBe(0);
    expect(hub.stats().tunnels).toBe(0);
  });

  it('refuses a WebSocket message larger than the frame limit allows, closing that tunnel only', async () => {
    chain = await startChain({ hub: { maxPacketSize: 64 * 1024 }, agent: { transports: ['websocket'], tunnels: 1 } });
    const ws = certifiedWebSocket(chain, DEFAULT_WS_PATH);
    await new Promise<void>((resolve, reject) => ws.once('open', () => resolve()).once('error', reject));
    const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
    ws.on('error', () => {});
    ws.send(Buffer.alloc(64 * 1024 + 9 + 1));
    expect(await closed).toBe(1009);
    expect(chain.agent.pool.readyCount).toBe(1);
  });

  it('refuses an upgrade on another path', async () => {
    chain = await startChain({ agent: { transports: ['websocket'], tunnels: 1 } });
    const ws = certifiedWebSocket(chain, '/elsewhere');
    const status = await new Promise<number>((resolve) => {
      ws.once('unexpected-response', (_request, response) => resolve(response.statusCode ?? 0));
      ws.once('error', () => resolve(-1));
    });
    expect(status).toBe(404);
  });
});
