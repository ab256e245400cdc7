import net from 'node:net';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { agentMetrics, agentReadiness } from '../../edge-agent/agent-metrics.js';
import { CloudHub } from '../../cloud-hub/hub.js';
import { hubMetrics, hubReadiness } from '../../cloud-hub/hub-metrics.js';
import { resolveRoute } from '../../cloud-hub/main.js';
import { quietLogger } from '../../shared/logger.js';
import { type MetricsServer, startMetricsServer } from '../../shared/metrics-server.js';
import { type Chain, eventually, hubOptions, removePki, startChain, testPki } from '../support/chain.js';

function metricValue(text: string, name: string): number {
  const match = text.match(new RegExp(`^${name.replace(/[{}"]/g, '\\$&')} (\\S+)$`, 'm'));
  if (match === null) throw new Error(`${name} not in the scrape`);
  return Number(match[1]);
}

async function scrape(server: MetricsServer): Promise<string> {
  return (await fetch(`http://127.0.0.1:${server.address.port}/metrics`)).text();
}

describe('metrics and health', () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    while (cleanups.length > 0) await cleanups.pop()!();
  });
  afterAll(() => removePki());

  async function chainWithMetrics(options: Parameters<typeof startChain>[0] = {}): Promise<{ chain: Chain; hubServer: MetricsServer; agentServer: MetricsServer }> {
    const chain = await startChain(options);
    cleanups.push(() => chain.close());
    const hubServer = await startMetricsServer({ host: '127.0.0.1', port: 0, registry: hubMetrics(chain.hub), ready: () => hubReadiness(chain.hub) });
    cleanups.push(() => hubServer.close());
    const agentServer = await startMetricsServer({ host: '127.0.0.1', port: 0, registry: agentMetrics(chain.agent), ready: () => agentReadiness(chain.agent) });
    cleanups.push(() => agentServer.close());
    return { chain, hubServer, agentServer };
  }

  it('counts messages and bytes each way at the agent and at the hub', async () => {
    const { chain, hubServer, agentServer } = await chainWithMetrics();
    const app = await chain.app({ clientId: 'counter-app' });
    await app.subscribeAsync('count/#', { qos: 0 });
    const device = await chain.device({ clientId: 'counter-device' });
    const received: string[] = [];
    app.on('message', (topic) => received.push(topic));
    for (let i = 0; i < 5; i++) device.publish(`count/${i}`, 'x'.repeat(10), { qos: 0 });
    await eventually(() => received.length === 5, 5000, 'five publishes at the application');

    // CONNECT and five PUBLISHes up; the CONNACK down.
    const hubText = await scrape(hubServer);
    expect(metricValue(hubText, 'edgemux_hub_messages_to_broker_total')).toBe(6);
    expect(metricValue(hubText, 'edgemux_hub_messages_to_device_total')).toBe(1);
    expect(metricValue(hubText, 'edgemux_hub_bytes_to_broker_total')).toBeGreaterThan(5 * 10);
    expect(metricValue(hubText, 'edgemux_hub_bytes_to_device_total')).toBe(4);
    const agentText = await scrape(agentServer);
    expect(metricValue(agentText, 'edgemux_agent_messages_to_hub_total')).toBe(6);
    expect(metricValue(agentText, 'edgemux_agent_messages_to_device_total')).toBe(1);
    expect(metricValue(agentText, 'edgemux_agent_bytes_to_hub_total')).toBe(metricValue(hubText, 'edgemux_hub_bytes_to_broker_total'));
    expect(metricValue(agentText, 'edgemux_agent_bytes_to_device_total')).toBe(4);
  });

  it('walks the sessions once per scrape, however many gauges read them', async () => {
    const { chain, hubServer } = await chainWithMetrics();
    await chain.device({ clientId: 'walked' });
    let walks = 0;
    const stats = chain.hub.stats.bind(chain.hub);
    chain.hub.stats = () => {
      walks++;
      return stats();
    };
    expect(metricValue(await scrape(hubServer), 'edgemux_hub_sessions')).toBe(1);
    expect(walks).toBe(1);
    await scrape(hubServer);
    expect(walks).toBe(2);
  });

  it('counts refusals by reason and resumes', async () => {
    const { chain, hubServer } = await chainWithMetrics({
      viaProxy: true,
      agent: { tunnels: 1 },
      hub: { namespaces: [{ agentId: 'agent-1', clientIds: ['mine-*'] }] },
    });
    await expect(chain.device({ clientId: 'theirs-1' })).rejects.toThrow(/Not authorized/i);
    const device = await chain.device({ clientId: 'mine-1' });
    chain.proxy!.breakOne(0);
    await eventually(() => chain.hub.counters.resumes === 1, 10_000, 'the stream to resume');
    const echoed = new Promise<string>((resolve) => device.once('message', (_topic, payload) => resolve(payload.toString())));
    await device.subscribeAsync('mine/echo');
    device.publish('mine/echo', 'after the break');
    expect(await echoed).toBe('after the break');
    const text = await scrape(hubServer);
    expect(metricValue(text, 'edgemux_hub_refusals_total{reason="namespace"}')).toBe(1);
    expect(metricValue(text, 'edgemux_hub_resumes_total')).toBe(1);
    expect(text).toMatch(/^edgemux_hub_slow_consumer_cutoffs_total 0$/m);
  });

  it('agent /readyz turns 503 with a reason when its hub stops, while /healthz stays 200', async () => {
    const { chain, agentServer } = await chainWithMetrics();
    const base = `http://127.0.0.1:${agentServer.address.port}`;
    const ready = await fetch(`${base}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ ready: true, tunnelsUp: 2 });
    const hubPort = chain.hub.tunnelAddress.port;
    await chain.hub.close();
    await eventually(() => chain.agent.pool.readyCount === 0, 5000, 'tunnels down');
    const notReady = await fetch(`${base}/readyz`);
    expect(notReady.status).toBe(503);
    const body = (await notReady.json()) as { ready: boolean; reasons: string[] };
    expect(body.ready).toBe(false);
    expect(body.reasons[0]).toBe(`no tunnel to a hub is up (hubs: 127.0.0.1:${hubPort})`);
    expect(body.reasons.join(' ')).toContain(`127.0.0.1:${hubPort}`);
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
  });

  it('hub /readyz turns 503 naming the route and broker when a route\'s only broker goes away, and back', async () => {
    // A health check is a TCP (or TLS) connect, so a bare listener stands in for the broker.
    const broker = net.createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => broker.listen(0, '127.0.0.1', resolve));
    const brokerPort = (broker.address() as net.AddressInfo).port;
    const { pki } = await testPki();
    const log = quietLogger('hub');
    const route = resolveRoute({ name: 'plant-a', match: { clientId: 'plant-a-*' }, backend: { brokers: [{ url: `mqtt://127.0.0.1:${brokerPort}`, rejectUnauthorized: true }], healthCheckMs: 100 } }, 0, log);
    const hub = await CloudHub.start(hubOptions(pki, { routes: [route] }));
    cleanups.push(() => hub.close());
    const server = await startMetricsServer({ host: '127.0.0.1', port: 0, registry: hubMetrics(hub), ready: () => hubReadiness(hub) });
    cleanups.push(() => server.close());
    const base = `http://127.0.0.1:${server.address.port}`;

    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    expect(metricValue(await scrape(server), `edgemux_hub_backend_up{route="plant-a",broker="mqtt://127.0.0.1:${brokerPort}"}`)).toBe(1);

    await new Promise<void>((resolve) => broker.close(() => resolve()));
    let body: { ready: boolean; reasons: string[] } = { ready: true, reasons: [] };
    for (const deadline = Date.now() + 5000; Date.now() < deadline; ) {
      const response = await fetch(`${base}/readyz`);
      body = (await response.json()) as typeof body;
      if (response.status === 503) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(body.ready).toBe(false);
    expect(body.reasons).toEqual([`route plant-a: no broker reachable (mqtt://127.0.0.1:${brokerPort})`]);
    expect(metricValue(await scrape(server), 'edgemux_hub_ready')).toBe(0);
    expect((await fetch(`${base}/healthz`)).status).toBe(200);

    const back = net.createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => back.listen(brokerPort, '127.0.0.1', resolve));
    cleanups.push(() => new Promise<void>((resolve) => back.close(() => resolve())));
    let status = 0;
    for (const deadline = Date.now() + 5000; status !== 200 && Date.now() < deadline; await new Promise((resolve) => setTimeout(resolve, 50))) {
      status = (await fetch(`${base}/readyz`)).status;
    }
    expect(status).toBe(200);
  });
});
