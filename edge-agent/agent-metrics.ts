import { Counter, Gauge, Registry } from 'prom-client';
import { endCounter } from '../shared/end-metrics.js';
import type { EdgeAgent } from './agent.js';

/** Gauges and counters read from the agent at scrape time: nothing is counted on the data path for them. */
export function agentMetrics(agent: EdgeAgent): Registry {
  const registry = new Registry();
  const gauge = (name: string, help: string, read: () => number): void => {
    new Gauge({ name, help, registers: [registry], collect() { this.set(read()); } });
  };
  const counter = (name: string, help: string, read: () => number): void => {
    let last = 0;
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        const now = read();
        this.inc(Math.max(0, now - last));
        last = now;
      },
    });
  };
  gauge('edgemux_agent_devices', 'Device connections held by the agent', () => agent.stats().devices);
  gauge('edgemux_agent_devices_attached', 'Devices whose CONNECT was forwarded', () => agent.stats().attached);
  gauge('edgemux_agent_streams_detached', 'Streams waiting to resume on a tunnel', () => agent.stats().detached);
  gauge('edgemux_agent_tunnels_up', 'Tunnels to the hub that are up', () => agent.stats().tunnelsUp);
  counter('edgemux_agent_wan_connections_total', 'TLS connections opened to hubs', () => agent.stats().wanConnections);
  counter('edgemux_agent_device_disconnects_total', 'Devices closed or lost after CONNECT', () => agent.stats().deviceDisconnects);
  counter('edgemux_agent_tunnel_bytes_in_total', 'Bytes received over tunnels', () => agent.pool.trafficTotals().bytesIn);
  counter('edgemux_agent_tunnel_bytes_out_total', 'Bytes sent over tunnels', () => agent.pool.trafficTotals().bytesOut);
  counter('edgemux_agent_tunnel_data_frames_out_total', 'DATA frames sent over tunnels', () => agent.pool.trafficTotals().dataFramesOut);
  gauge('edgemux_agent_tunnels_refused', 'Tunnel slots whose last dial the hub refused (see /healthz for why)', () => agent.pool.refusals().length);
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
 * Healthy while a tunnel is up. While none is, the hubs' refusals (if that
 * is why) say what the operator must fix, e.g. a second process using this
 * agent's certificate.
 */
export function agentHealth(agent: EdgeAgent): { healthy: boolean; [key: string]: unknown } {
  const refusals = agent.pool.refusals();
  return {
    healthy: agent.pool.readyCount > 0,
    ...agent.stats(),
    ...(refusals.length > 0 ? { refusals } : {}),
  };
}
