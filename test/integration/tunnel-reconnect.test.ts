import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { CloudHub } from '../../cloud-hub/hub.js';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { agentOptions, connectClient, hubOptions, removePki, testPki } from '../support/chain.js';

/** A TCP relay to the hub on a fixed port that can be taken away and brought back: the WAN link. */
class SwitchableLink {
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  port = 0;

  constructor(private readonly hubPort: number) {}

  async up(): Promise<void> {
    const server = net.createServer((agent) => {
      const hub = net.connect(this.hubPort, '127.0.0.1');
      for (const socket of [agent, hub]) {
        this.sockets.add(socket);
        socket.on('close', () => this.sockets.delete(socket));
        socket.on('error', () => {});
      }
      agent.pipe(hub).pipe(agent);
      agent.on('close', () => hub.destroy());
      hub.on('close', () => agent.destroy());
    });
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', () => resolve()));
    this.port = (server.address() as net.AddressInfo).port;
    this.server = server;
  }

  /** Connections die and the port refuses, as when the WAN interface goes away. */
  async down(): Promise<void> {
    const server = this.server!;
    this.server = null;
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('tunnels after an outage', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  afterAll(removePki);

  it('are back within 0.5 s of the link returning after a 3 s outage, and the device never noticed', async () => {
    const { pki } = await testPki();
    const hub = await CloudHub.start(hubOptions(pki));
    cleanups.push(() => hub.close());
    const link = new SwitchableLink(hub.tunnelAddress.port);
    await link.up();
    cleanups.push(async () => {
      await link.down().catch(() => {});
    });
    // The configured backoff defaults, and the jitter that makes every probe wait longest.
    const agent = await EdgeAgent.start(agentOptions(pki, link.port, { tunnels: 2, backoffInitialMs: 250, backoffMaxMs: 30_000, random: () => 0.999 }));
    cleanups.push(() => agent.close());
    await agent.pool.waitForTunnels(2);
    const device = await connectClient(agent.deviceAddress.port, { clientId: 'through-outage' });
    cleanups.push(() => device.endAsync(true));
    let deviceClosed = false;
    device.on('close', () => (deviceClosed = true));
    await device.subscribeAsync('outage/echo', { qos: 1 });

    const bothDown = new Promise<void>((resolve) => agent.pool.on('down', () => agent.pool.readyCount === 0 && resolve()));
    await link.down();
    await bothDown;
    await sleep(3000);
    await link.up();
    const back = performance.now();
    await agent.pool.waitForTunnels(2, 5000);
    const elapsedMs = performance.now() - back;
    expect(elapsedMs, 'ms from the link returning to both tunnels up').toBeLessThan(500);

    const echo = new Promise<string>((resolve) => device.once('message', (_topic, payload) => resolve(payload.toString())));
    await device.publishAsync('outage/echo', 'after', { qos: 1 });
    expect(await echo).toBe('after');
    expect(deviceClosed).toBe(false);
  });

  it('back off exponentially from a hub that takes the connection and refuses it', async () => {
    const { pki } = await testPki();
    const accepted: number[] = [];
    const refusing = net.createServer((socket) => {
      accepted.push(performance.now());
      socket.destroy();
    });
    await new Promise<void>((resolve) => refusing.listen(0, '127.0.0.1', () => resolve()));
    cleanups.push(() => new Promise<void>((resolve) => refusing.close(() => resolve())));
    const fifth = new Promise<void>((resolve) => refusing.on('connection', () => accepted.length === 5 && resolve()));
    const port = (refusing.address() as net.AddressInfo).port;
    const agent = await EdgeAgent.start(agentOptions(pki, port, { tunnels: 1, backoffInitialMs: 50, backoffMaxMs: 30_000, random: () => 0.999 }));
    cleanups.push(() => agent.close());
    await fifth;
    const gaps = accepted.slice(1, 5).map((at, i) => at - accepted[i]);
    // 49, 99, 199, 399 ms of backoff, each plus a handshake attempt.
    expect(gaps[1]).toBeGreaterThanOrEqual(99);
    expect(gaps[2]).toBeGreaterThanOrEqual(199);
    expect(gaps[3]).toBeGreaterThanOrEqual(399);
  });
});
