import { Counter, Gauge, Registry } from 'prom-client';
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
  total('edgemux_hub_registry_expired_rows_total', 'Agents and devices deleted from the registry for not being seen within registry.expireAfterDays', () => hub.registry?.stats.expiredRows ?? 0);
  total('edgemux_hub_dropped_qos0_total', 'QoS 0 messages dropped for devices that could not keep up', () => hub.stats().droppedQos0);
  total(
    'edgemux_hub_dropped_oversized_total',
    'Deliveries dropped, and acknowledged to the broker, because they were larger than the device could receive',
    () => hub.stats().droppedOversized,
  );
  total(
    'edgemux_hub_offline_queue_dropped_total',
    'Messages not queued for a session that was away because its queue was full (offlineQueue)',
    () => hub.stats().offlineDropped,
  );
  gauge('edgemux_hub_offline_queued_messages', 'Messages the embedded broker holds queued for sessions', () => hub.stats().offlineQueued);
  total(
    'edgemux_hub_subscriptions_refused_total',
    'Topic filters refused with SUBACK 0x80: too many for the client, too long or too deep (subscriptions)',
    () => hub.stats().subscriptionsRefused,
  );
  total('edgemux_hub_broker_client_errors_total', 'Clients the embedded broker closed for a packet it refuses (logged, rate-limited)', () => hub.stats().brokerClientErrors);
  total('edgemux_hub_agent_device_limit_refused_total', 'Devices refused because their agent held maxDevicesPerAgent', () => hub.stats().agentDeviceLimitRefused);
  gauge('edgemux_hub_tunnel_unauthenticated', 'Tunnel connections that have not been accepted with HELLO', () => hub.stats().unauthenticated);
  total('edgemux_hub_tunnel_handshake_timeouts_total', 'Tunnel connections closed for not finishing the TLS handshake (or WebSocket upgrade) in time', () => hub.stats().handshakeTimeouts);
  total(
    'edgemux_hub_tunnel_unauthenticated_refused_total',
    'Tunnel connections closed on accept because too many were unauthenticated',
    () => hub.stats().unauthenticatedRefused,
  );
  return registry;
}
