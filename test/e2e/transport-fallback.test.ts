import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { CloudApp } from '../../firmware-sim/cloud-app.js';
import { DeviceFleet } from '../../firmware-sim/device-fleet.js';
import { CloudHub } from '../../cloud-hub/hub.js';
import { EdgeAgent, type AgentOptions } from '../../edge-agent/agent.js';
import { agentMetrics } from '../../edge-agent/agent-metrics.js';
import { AlpnFilterRelay } from '../support/alpn-filter-relay.js';
import { agentOptions, eventually, hubOptions, removePki, testPki } from '../support/chain.js';

interface Setup {
  hub: CloudHub;
  relay: AlpnFilterRelay;
  agent: EdgeAgent;
  logs: { msg: string; transport?: string; tunnel?: number; from?: string; to?: string }[];
}

describe('each tunnel finds a transport that gets through, and goes back to the preferred one', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  afterAll(removePki);

  /** A hub behind a firewall that lets only HTTPS (ALPN http/1.1) through, and an agent left to find its way. */
  async function start(agent: Partial<AgentOptions> = {}): Promise<Setup> {
    const { pki } = await testPki();
    const hub = await CloudHub.start(hubOptions(pki, { heartbeatMs: 200, deadAfterMs: 1000 }));
    cleanups.push(() => hub.close());
    const relay = await AlpnFilterRelay.start(hub.tunnelAddress.port);
    cleanups.push(() => relay.close());
    const logs: Setup['logs'] = [];
    const started = await EdgeAgent.start(
      agentOptions(pki, relay.port, {
        heartbeatMs: 200,
        deadAfterMs: 1000,
        log: pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line)) }),
        ...agent,
      }),
    );
    cleanups.push(() => started.close());
    return { hub, relay, agent: started, logs };
  }

  it('comes up on WebSocket by itself when raw TLS is blocked, says so, and redials WebSocket first after a break', async () => {
    const { relay, agent, logs } = await start();
    await agent.pool.waitForTunnels(2, 10_000);
    expect(agent.pool.tunnelsByTransport()).toEqual({ tls: 0, websocket: 2, proxy: 0 });
    expect(relay.blocked).toBeGreaterThanOrEqual(2);
    const up = logs.filter((line) => line.msg === 'tunnel up');
    expect(up.map((line) => line.transport)).toEqual(['websocket', 'websocket']);
    const metrics = await agentMetrics(agent).metrics();
    expect(metrics).toContain('edgemux_agent_tunnels_by_transport{transport="websocket"} 2');
    expect(metrics).toContain('edgemux_agent_tunnels_by_transport{transport="tls"} 0');

    // What worked is remembered: the redial after a break does not try raw TLS again.
    const blockedBefore = relay.blocked;
    relay.breakAll();
    await eventually(() => agent.pool.readyCount === 0, 3000, 'the tunnels to notice the break');
    await agent.pool.waitForTunnels(2, 10_000);
    expect(agent.pool.tunnelsByTransport().websocket).toBe(2);
    expect(relay.blocked).toBe(blockedBefore);
  });

  it('moves back to raw TLS once it gets through again, without a device noticing', async () => {
    const { hub, relay, agent, logs } = await start({ preferredRetryMs: 500 });
    await agent.pool.waitForTunnels(2, 10_000);
    expect(agent.pool.tunnelsByTransport().websocket).toBe(2);
    const app = await CloudApp.connect({ host: '127.0.0.1', port: hub.appAddress.port, clientId: 'fallback-app' });
    cleanups.push(() => app.close());
    const fleet = new DeviceFleet({ port: agent.deviceAddress.port, devices: 20, ratePerDevice: 20, qos: 1, keepaliveSeconds: 30 });
    cleanups.push(() => fleet.stop());
    await fleet.start();
    await new Promise((resolve) => setTimeout(resolve, 1000));
    // Still blocked: the checks fail and the tunnels stay where they are.
    expect(agent.pool.tunnelsByTransport().websocket).toBe(2);

    relay.open = true;
    await eventually(() => agent.pool.tunnelsByTransport().tls === 2, 10_000, 'both tunnels back on raw TLS');
    expect(logs.filter((line) => line.msg === 'preferred transport works again; moving the tunnel to it').map((line) => [line.from, line.to])).toEqual([
      ['websocket', 'tls'],
      ['websocket', 'tls'],
    ]);

    fleet.pausePublishing();
    await eventually(() => {
      const stats = fleet.stats();
      return stats.acked === stats.sent && app.sequences.delivered >= stats.sent;
    }, 20_000, 'every publish to be acknowledged and delivered');
    const stats = fleet.stats();
    expect(stats.sent).toBeGreaterThan(500);
    expect(stats.disconnects).toBe(0);
    expect(app.sequences.delivered).toBe(stats.sent);
    expect(app.sequences.duplicates).toBe(0);
    expect(app.sequences.gaps).toBe(0);
    expect(agent.stats().deviceDisconnects).toBe(0);
  });
});
