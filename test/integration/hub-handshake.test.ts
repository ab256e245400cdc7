import net from 'node:net';
import tls from 'node:tls';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { CloudHub } from '../../cloud-hub/hub.js';
import { hubMetrics } from '../../cloud-hub/hub-metrics.js';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { ENROLL_ALPN } from '../../shared/enrollment-wire.js';
import { decodeFrames, FrameType } from '../../shared/frame-codec.js';
import { agentOptions, eventually, hubOptions, removePki, testPki } from '../support/chain.js';

/** A TCP connection to the tunnel port that never starts its TLS handshake. */
async function silentConnection(port: number): Promise<{ socket: net.Socket; closed: Promise<number> }> {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.on('error', () => {});
  const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now())));
  return { socket, closed };
}

/** A TLS client that completes the handshake and then never closes its side: all it reads is kept. */
async function lingeringTlsClient(port: number, alpn?: string): Promise<{ socket: tls.TLSSocket; received: Buffer[] }> {
  // allowHalfOpen is honoured by tls.connect but missing from its option type.
  const options = { port, host: '127.0.0.1', rejectUnauthorized: false, allowHalfOpen: true, ...(alpn !== undefined ? { ALPNProtocols: [alpn] } : {}) };
  const socket = tls.connect(options as tls.ConnectionOptions);
  socket.on('error', () => {});
  const received: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => received.push(chunk));
  await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
  return { socket, received };
}

async function metricValue(hub: CloudHub, name: string): Promise<number> {
  const text = await hubMetrics(hub).metrics();
  const line = text.split('\n').find((row) => row.startsWith(`${name} `));
  return Number(line?.split(' ')[1]);
}

describe('tunnel port against strangers that never finish a handshake', () => {
  let hub: CloudHub;
  const sockets: net.Socket[] = [];
  let agent: EdgeAgent | null = null;

  afterEach(async () => {
    for (const socket of sockets.splice(0)) socket.destroy();
    await agent?.close();
    agent = null;
    await hub.close();
  });
  afterAll(removePki);

  it('closes connections that do not finish the TLS handshake within the timeout, and counts them', async () => {
    const { pki } = await testPki();
    hub = await CloudHub.start(hubOptions(pki, { handshakeTimeoutMs: 300 }));
    const started = Date.now();
    const stalled = await Promise.all(Array.from({ length: 20 }, () => silentConnection(hub.tunnelAddress.port)));
    sockets.push(...stalled.map(({ socket }) => socket));

    const closedAt = await Promise.all(stalled.map(({ closed }) => closed));
    for (const at of closedAt) {
      expect(at - started).toBeGreaterThanOrEqual(250);
      expect(at - started).toBeLessThan(5000);
    }
    await eventually(() => hub.stats().unauthenticated === 0, 2000, 'the hub to forget the closed connections');
    expect(hub.stats().handshakeTimeouts).toBe(20);
    expect(await metricValue(hub, 'edgemux_hub_tunnel_handshake_timeouts_total')).toBe(20);
  });

  it('closes connections past the unauthenticated limit on accept, and not agents that said HELLO', async () => {
    const { pki } = await testPki();
    hub = await CloudHub.start(hubOptions(pki, { handshakeTimeoutMs: 60_000, maxUnauthenticated: 3 }));
    const held = await Promise.all(Array.from({ length: 3 }, () => silentConnection(hub.tunnelAddress.port)));
    sockets.push(...held.map(({ socket }) => socket));
    await eventually(() => hub.stats().unauthenticated === 3, 2000, 'three unauthenticated connections');

    const extra = await silentConnection(hub.tunnelAddress.port);
    sockets.push(extra.socket);
    await extra.closed;
    expect(held.map(({ socket }) => socket.destroyed)).toEqual([false, false, false]);
    expect(hub.stats().unauthenticatedRefused).toBe(1);
    expect(await metricValue(hub, 'edgemux_hub_tunnel_unauthenticated_refused_total')).toBe(1);
    expect(await metricValue(hub, 'edgemux_hub_tunnel_unauthenticated')).toBe(3);

    // One slot freed: an agent gets in, and once past HELLO it no longer takes a slot.
    held[0].socket.destroy();
    await eventually(() => hub.stats().unauthenticated === 2, 2000, 'a free slot');
    agent = await EdgeAgent.start(agentOptions(pki, hub.tunnelAddress.port, { tunnels: 1 }));
    await agent.pool.waitForTunnels(1);
    expect(hub.stats()).toMatchObject({ tunnels: 1, unauthenticated: 2 });
  });

  it('counts a refused stranger and an enrollment connection as unauthenticated until they are dropped', async () => {
    const { pki } = await testPki();
    hub = await CloudHub.start(hubOptions(pki, { maxUnauthenticated: 2 }));
    const stranger = await lingeringTlsClient(hub.tunnelAddress.port);
    const enrolling = await lingeringTlsClient(hub.tunnelAddress.port, ENROLL_ALPN);
    sockets.push(stranger.socket, enrolling.socket);
    await eventually(() => stranger.received.length > 0 && enrolling.received.length > 0, 2000, 'both answered');
    expect(hub.stats().unauthenticated).toBe(2);

    const extra = await silentConnection(hub.tunnelAddress.port);
    sockets.push(extra.socket);
    await extra.closed;
    expect(hub.stats().unauthenticatedRefused).toBe(1);

    // The stranger's only frame is a GOODBYE in place of HELLO, naming the missing certificate.
    const frames = decodeFrames(Buffer.concat(stranger.received), 1 << 20);
    expect(frames).toMatchObject([{ type: FrameType.GOODBYE, streamId: 0, body: { code: 'certificate-refused', problem: 'no-certificate' } }]);

    // Neither client closes its side; the hub drops both after its linger.
    await eventually(() => hub.stats().unauthenticated === 0, 4000, 'both connections dropped');
  });
});
