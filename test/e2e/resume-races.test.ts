import type { Socket } from 'node:net';
import type { MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { CloudHub, type HubOptions } from '../../cloud-hub/hub.js';
import { type AgentOptions, EdgeAgent } from '../../edge-agent/agent.js';
import type { Tunnel } from '../../shared/tunnel.js';
import { agentOptions, connectClient, eventually, hubOptions, removePki, testPki } from '../support/chain.js';
import { HoldRelay } from '../support/hold-relay.js';
import { ManualClock } from '../support/manual-clock.js';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('resume races', () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
    await removePki();
  });

  async function setup(hub: Partial<HubOptions>, agent: Partial<AgentOptions>) {
    const { pki } = await testPki();
    const hubInstance = await CloudHub.start(hubOptions(pki, { heartbeatMs: 500, deadAfterMs: 30_000, ...hub }));
    cleanups.push(() => hubInstance.close());
    const relay = await HoldRelay.start(hubInstance.tunnelAddress.port);
    cleanups.push(() => relay.close());
    const agentInstance = await EdgeAgent.start(
      agentOptions(pki, relay.port, { tunnels: 2, heartbeatMs: 500, deadAfterMs: 30_000, backoffInitialMs: 50, backoffMaxMs: 200, ...agent }),
    );
    cleanups.push(() => agentInstance.close());
    await agentInstance.pool.waitForTunnels(2);
    const app = await connectClient(hubInstance.appAddress.port, { clientId: 'race-watcher' });
    cleanups.push(() => app.endAsync(true));
    const seen: string[] = [];
    await app.subscribeAsync('#', { qos: 1 });
    app.on('message', (topic, payload) => seen.push(`${topic}:${payload.toString()}`));
    return { hub: hubInstance, relay, agent: agentInstance, seen };
  }

  async function device(agent: EdgeAgent, clientId: string, extra: object = {}): Promise<{ client: MqttClient; closed: () => boolean }> {
    const client = await connectClient(agent.deviceAddress.port, {
      clientId,
      reconnectPeriod: 0,
      will: { topic: `wills/${clientId}`, payload: Buffer.from('gone'), qos: 1, retain: false },
      ...extra,
    });
    cleanups.push(() => client.endAsync(true));
    let closed = false;
    client.on('close', () => (closed = true));
    return { client, closed: () => closed };
  }

  function carrierAndOther(agent: EdgeAgent): { carrier: Tunnel; other: Tunnel } {
    const tunnels = agent.pool.liveTunnels();
    const carrier = tunnels.find((tunnel) => agent.streamsOn(tunnel) > 0)!;
    return { carrier, other: tunnels.find((tunnel) => tunnel !== carrier)! };
  }

  const portOf = (tunnel: Tunnel): number | undefined => (tunnel.socket as Socket).localPort;

  it('ends the hub session (and publishes the will) when the agent gives up while its RESUME is still on the way', async () => {
    const agentClock = new ManualClock(Date.now());
    const { hub, relay, agent, seen } = await setup({ resumeGraceMs: 3000 }, { resumeGraceMs: 1000, clock: agentClock });
    const { closed } = await device(agent, 'zombie-1');
    await sleep(200);
    const { carrier, other } = carrierAndOther(agent);
    const slow = relay.byAgentPort(portOf(other));
    slow.holdDown = true;
    relay.byAgentPort(portOf(carrier)).agent.destroy();
    await eventually(() => agent.streamsOn(other) === 1, 4000, 'the RESUME to go out on the slow tunnel');
    agentClock.advance(1000);
    expect(closed()).toBe(false);
    agentClock.advance(1000);
    await eventually(closed, 2000, 'the agent to give up on the device');
    relay.release(slow);
    await eventually(() => seen.includes('wills/zombie-1:gone'), 5000, 'the will');
    await eventually(() => ![...hub.sessions].some((session) => session.clientId === 'zombie-1'), 3000, 'no session left');
  });

  it('ignores a stale RESUME that arrives after a newer one over a tunnel the agent abandoned', async () => {
    const hubClock = new ManualClock(Date.now());
    const { hub, relay, agent, seen } = await setup({ resumeGraceMs: 3000, clock: hubClock }, { resumeGraceMs: 60_000 });
    const { client, closed } = await device(agent, 'stranded-1');
    await client.publishAsync('t/before', 'before', { qos: 1 });
    const { carrier, other } = carrierAndOther(agent);
    const stalled = relay.byAgentPort(portOf(other));
    stalled.holdUp = true;
    relay.byAgentPort(portOf(carrier)).agent.destroy();
    await sleep(500);
    other.close('heartbeat-timeout', 'no bytes from the hub for too long');
    await eventually(() => agent.stats().detached === 0 && agent.stats().tunnelsUp === 2, 5000, 'the stream to resume');
    relay.release(stalled);
    await sleep(300);
    await client.publishAsync('t/after', 'after', { qos: 1 });
    // Past the hub's grace period: a session the stale RESUME had moved off its tunnel would end now.
    hubClock.advance(3500);
    expect([...hub.sessions].find((session) => session.clientId === 'stranded-1')?.state).toBe('attached');
    await eventually(() => seen.includes('t/after:after'), 2000, 'the message sent after the resume');
    expect(seen).not.toContain('wills/stranded-1:gone');
    expect(closed()).toBe(false);
  });

  it('holds a detached device to the hub’s packet size, so the replay cannot break the tunnel', async () => {
    const { relay, agent } = await setup({ maxPacketSize: 2048 }, {});
    const { client, closed } = await device(agent, 'big-1');
    const { carrier, other } = carrierAndOther(agent);
    const slow = relay.byAgentPort(portOf(other));
    slow.holdDown = true;
    relay.byAgentPort(portOf(carrier)).agent.destroy();
    await sleep(100);
    client.publish('t/big', Buffer.alloc(4000, 1), { qos: 0 });
    await eventually(closed, 3000, 'the oversized device to be closed');
    const opened = agent.pool.connectionsOpened;
    relay.release(slow);
    await sleep(2000);
    expect(agent.pool.connectionsOpened - opened).toBeLessThanOrEqual(1);
    expect(agent.stats().tunnelsUp).toBe(2);
  });

  it('does not close a device for keepalive while the agent itself holds it paused', async () => {
    const { relay, agent, seen } = await setup({ streamWindow: 1024, resumeGraceMs: 60_000 }, { resumeGraceMs: 60_000 });
    const { client, closed } = await device(agent, 'busy-1', { keepalive: 2 });
    const { carrier, other } = carrierAndOther(agent);
    const slow = relay.byAgentPort(portOf(other));
    slow.holdDown = true;
    relay.byAgentPort(portOf(carrier)).agent.destroy();
    await sleep(100);
    for (let i = 0; i < 20; i++) client.publish('busy/x', Buffer.alloc(200, i), { qos: 0 });
    await sleep(5000);
    expect(closed()).toBe(false);
    relay.release(slow);
    await eventually(() => seen.filter((message) => message.startsWith('busy/x')).length === 20, 5000, 'all 20 messages');
    expect(closed()).toBe(false);
  });

  it('sends packets held for credit, DISCONNECT included, after the device has gone: no will', async () => {
    const { relay, agent, seen } = await setup({ streamWindow: 1024, resumeGraceMs: 60_000 }, { resumeGraceMs: 60_000 });
    const { client } = await device(agent, 'leaving-1');
    const { carrier, other } = carrierAndOther(agent);
    const slow = relay.byAgentPort(portOf(other));
    slow.holdDown = true;
    relay.byAgentPort(portOf(carrier)).agent.destroy();
    await sleep(100);
    for (let i = 0; i < 20; i++) client.publish('leaving/x', Buffer.alloc(200, i), { qos: 0 });
    await client.endAsync();
    relay.release(slow);
    await eventually(() => seen.filter((message) => message.startsWith('leaving/x')).length === 20, 5000, 'all 20 messages');
    await sleep(500);
    expect(seen).not.toContain('wills/leaving-1:gone');
  });
});
