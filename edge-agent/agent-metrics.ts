import { Counter, Gauge, Registry } from 'prom-client';
import { endCounter } from '../shared/end-metrics.js';
import { mirrorTotal, perScrape, type Readiness, readGauge } from '../shared/metrics-server.js';
import type { EdgeAgent } from './agent.js';

/**
 * Gauges and counters read from the agent at scrape time: the data path only
 * adds to plain numbers, and what needs a walk over the devices is taken once
 * per scrape, however many gauges read it.
 */
export function agentMetrics(agent: EdgeAgent): Registry {
  const registry = new Registry();
  const stats = perScrape(() => agent.stats());
  const tunnelTraffic = perScrape(() => agent.pool.trafficTotals());
  const gauge = (name: string, help: string, read: () => number): void => readGauge(registry, name, help, read);
  const counter = (name: string, help: string, read: () => number): void => mirrorTotal(registry, name, help, read);
  gauge('edgemux_agent_devices', 'Device connections held by the agent', () => stats().devices);
  gauge('edgemux_agent_devices_attached', 'Devices whose CONNECT was forwarded', () => stats().attached);
  gauge('edgemux_agent_streams_detached', 'Streams waiting to resume on a tunnel', () => stats().detached);
  gauge('edgemux_agent_tunnels_up', 'Tunnels to the hub that are up', () => stats().tunnelsUp);
  new Gauge({
    name: 'edgemux_agent_tunnels_by_transport',
    help: 'Tunnels up, by the transport carrying them (tls, websocket, proxy)',
    labelNames: ['transport'],
    registers: [registry],
    collect() {
      for (const [transport, count] of Object.entries(agent.pool.tunnelsByTransport())) this.set({ transport }, count);
    },
  });
  counter('edgemux_agent_wan_connections_total', 'TLS connections opened to hubs', () => stats().wanConnections);
  counter('edgemux_agent_device_disconnects_total', 'Devices closed or lost after CONNECT', () => stats().deviceDisconnects);
  counter('edgemux_agent_connects_rate_limited_total', 'CONNECTs refused because their source address connected too often', () => stats().connectsRateLimited);
  counter('edgemux_agent_tunnel_bytes_in_total', 'Bytes received over tunnels', () => tunnelTraffic().bytesIn);
  counter('edgemux_agent_tunnel_bytes_out_total', 'Bytes sent over tunnels', () => tunnelTraffic().bytesOut);
  counter('edgemux_agent_tunnel_data_frames_out_total', 'DATA frames sent over tunnels', () => tunnelTraffic().dataFramesOut);
  counter('edgemux_agent_messages_to_hub_total', 'MQTT packets from devices sent towards the hub (PINGREQs are answered locally)', () => agent.traffic.messagesToHub);
  counter('edgemux_agent_bytes_to_hub_total', 'Bytes of MQTT packets from devices sent towards the hub', () => agent.traffic.bytesToHub);
  counter('edgemux_agent_messages_to_device_total', 'MQTT packets from the hub written to devices', () => agent.traffic.messagesToDevice);
  counter('edgemux_agent_bytes_to_device_total', 'Bytes of MQTT packets from the hub written to devices', () => agent.traffic.bytesToDevice);
  gauge('edgemux_agent_tunnels_refused', 'Tunnel slots whose last dial the hub refused (see /readyz for why)', () => agent.pool.refusals().length);
  const refusalsSeen = new Map<string, number>();
  new Counter({
    name: 'edgemux_agent_tunnel_refusals_total',
    help: 'Tunnels a hub refused with GOODBYE, by its code',
    labelNames: ['code'],
    registers: [registry],
    collect() {
      for (const [code, now] of agent.pool.refusalCounts) {
        this.inc({ code }, Math.max(0, now - (refusalsSeen.get(code) ?? 0)));
        refusalsSeen.set(code, now);
      }
    },
  });
  endCounter(registry, 'edgemux_agent_stream_ends_total', 'Device streams ended, by reason (docs/errors.md)', () => agent.streamEnds);
  endCounter(registry, 'edgemux_agent_tunnel_closes_total', 'Tunnels to hubs closed, by reason (docs/errors.md)', () => agent.pool.tunnelEnds);
  return registry;
}

/**
 * /readyz of the agent: ready while at least one tunnel to a hub is up.
 * While none is, the reasons say what the operator must fix: a hub's
 * refusal (e.g. a second process using this agent's certificate) before the
 * last dial's failure, which only says that the tunnel went.
 */
export function agentReadiness(agent: EdgeAgent): Readiness {
  const tunnelsUp = agent.pool.readyCount;
  const refusals = agent.pool.refusals();
  const reasons: string[] = [];
  if (tunnelsUp === 0) {
    const hubs = agent.pool.hubs.map((hub) => `${hub.host}:${hub.port}`).join(', ');
    reasons.push(`no tunnel to a hub is up (hubs: ${hubs})`);
    for (const refusal of refusals) reasons.push(`hub ${refusal.hub} refused tunnel ${refusal.tunnel} (${refusal.code}${refusal.problem === undefined ? '' : `: ${refusal.problem}`}): ${refusal.reason}`);
    if (agent.pool.lastFailure !== null) reasons.push(agent.pool.lastFailure);
  }
  return { ready: tunnelsUp > 0, reasons, tunnelsUp, ...(refusals.length > 0 ? { refusals } : {}) };
}
