import { Counter, Gauge, Registry } from 'prom-client';
import { endCounter } from '../shared/end-metrics.js';
import type { CloudHub } from './hub.js';

/** Gauges and counters read from the hub at scrape time. */
export function hubMetrics(hub: CloudHub): Registry {
  const registry = new Registry();
  const gauge = (name: string, help: string, read: () => number): void => {
    new Gauge({ name, help, registers: [registry], collect() { this.set(read()); } });
  };
  // Counters mirror totals the hub keeps, so each scrape adds the growth since the last.
  const total = (name: string, help: string, read: () => number): void => {
    let seen = 0;
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        const now = read();
        this.inc(Math.max(0, now - seen));
        seen = now;
      },
    });
  };
  gauge('edgemux_hub_agents', 'Agents with at least one tunnel up', () => hub.stats().agents);
  gauge('edgemux_hub_tunnels', 'Agent tunnels up', () => hub.stats().tunnels);
  gauge('edgemux_hub_sessions', 'Device sessions held', () => hub.stats().sessions);
  gauge('edgemux_hub_sessions_detached', 'Device sessions waiting for their stream to resume', () => hub.stats().detached);
  gauge('edgemux_hub_queued_bytes', 'Broker output waiting for device stream credit', () => hub.stats().queuedBytes);
  gauge('edgemux_hub_replay_bytes', 'Bytes held for replay to agents', () => hub.stats().replayBytes);
  gauge('edgemux_hub_broker_held_bytes', 'Device bytes waiting for a broker connection that is dialling or congested', () => hub.stats().brokerHeldBytes);
  gauge('edgemux_hub_registry_pending_rows', 'Agents and devices whose registry changes are not yet written', () => hub.registry?.stats.pendingRows ?? 0);
  total('edgemux_hub_registry_flush_failures_total', 'Registry flushes that failed and were retried', () => hub.registry?.stats.flushFailures ?? 0);
  total('edgemux_hub_registry_dropped_changes_total', 'Registry changes dropped because too many were pending', () => hub.registry?.stats.droppedChanges ?? 0);
  total('edgemux_hub_dropped_qos0_total', 'QoS 0 messages dropped for devices that could not keep up', () => hub.stats().droppedQos0);
  gauge('edgemux_hub_tunnel_unauthenticated', 'Tunnel connections that have not been accepted with HELLO', () => hub.stats().unauthenticated);
  total('edgemux_hub_tunnel_handshake_timeouts_total', 'Tunnel connections closed for not finishing the TLS handshake in time', () => hub.stats().handshakeTimeouts);
  total(
    'edgemux_hub_tunnel_unauthenticated_refused_total',
    'Tunnel connections closed on accept because too many were unauthenticated',
    () => hub.stats().unauthenticatedRefused,
  );
  endCounter(registry, 'edgemux_hub_stream_ends_total', 'Device streams ended, by reason (docs/errors.md)', () => hub.streamEnds);
  endCounter(registry, 'edgemux_hub_tunnel_closes_total', 'Agent tunnels closed, by reason (docs/errors.md)', () => hub.tunnelEnds);
  return registry;
}
