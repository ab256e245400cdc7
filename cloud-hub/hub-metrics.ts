import { Counter, Gauge, Registry } from 'prom-client';
import { endCounter } from '../shared/end-metrics.js';
import { mirrorTotal, perScrape, type Readiness, readGauge } from '../shared/metrics-server.js';
import type { CloudHub } from './hub.js';

/**
 * Gauges and counters read from the hub at scrape time. Totals are counted
 * where they happen (HubCounters); what needs a walk over the sessions is
 * taken once per scrape, however many gauges read it.
 */
export function hubMetrics(hub: CloudHub): Registry {
  const registry = new Registry();
  const stats = perScrape(() => hub.stats());
  const readiness = perScrape(() => hub.readiness());
  const gauge = (name: string, help: string, read: () => number): void => readGauge(registry, name, help, read);
  const total = (name: string, help: string, read: () => number): void => mirrorTotal(registry, name, help, read);
  const { counters } = hub;
  gauge('edgemux_hub_agents', 'Agents with at least one tunnel up', () => stats().agents);
  gauge('edgemux_hub_tunnels', 'Agent tunnels up', () => stats().tunnels);
  gauge('edgemux_hub_sessions', 'Device sessions held', () => stats().sessions);
  gauge('edgemux_hub_sessions_detached', 'Device sessions waiting for their stream to resume', () => stats().detached);
  gauge('edgemux_hub_queued_bytes', 'Broker output waiting for device stream credit', () => stats().queuedBytes);
  gauge('edgemux_hub_replay_bytes', 'Bytes held for replay to agents', () => stats().replayBytes);
  gauge('edgemux_hub_broker_held_bytes', 'Device bytes waiting for a broker connection that is dialling or congested', () => stats().brokerHeldBytes);
  gauge('edgemux_hub_registry_pending_rows', 'Agents and devices whose registry changes are not yet written', () => hub.registry?.stats.pendingRows ?? 0);
  gauge('edgemux_hub_ready', '1 when the hub is ready: listeners up and every route with a reachable broker', () => (readiness().ready ? 1 : 0));
  total('edgemux_hub_registry_flush_failures_total', 'Registry flushes that failed and were retried', () => hub.registry?.stats.flushFailures ?? 0);
  total('edgemux_hub_registry_dropped_changes_total', 'Registry changes dropped because too many were pending', () => hub.registry?.stats.droppedChanges ?? 0);
  total('edgemux_hub_registry_expired_rows_total', 'Agents and devices deleted from the registry for not being seen within registry.expireAfterDays', () => hub.registry?.stats.expiredRows ?? 0);
  total('edgemux_hub_dropped_qos0_total', 'QoS 0 messages dropped for devices that could not keep up', () => stats().droppedQos0);
  total(
    'edgemux_hub_dropped_oversized_total',
    'Deliveries dropped, and acknowledged to the broker, because they were larger than the device could receive',
    () => stats().droppedOversized,
  );
  total(
    'edgemux_hub_offline_queue_dropped_total',
    'Messages not queued for a session that was away because its queue was full (offlineQueue)',
    () => stats().offlineDropped,
  );
  gauge('edgemux_hub_offline_queued_messages', 'Messages the embedded broker holds queued for sessions', () => stats().offlineQueued);
  total(
    'edgemux_hub_subscriptions_refused_total',
    'Topic filters refused with SUBACK 0x80: too many for the client, too long or too deep (subscriptions)',
    () => stats().subscriptionsRefused,
  );
  const aclSeen = new Map<string, number>();
  new Counter({
    name: 'edgemux_hub_acl_denied_total',
    help: 'Refused by the ACL file (acl.file): PUBLISHes dropped (publish), filters answered with SUBACK 0x80 (subscribe), messages not delivered to a client that may not read them (deliver)',
    labelNames: ['action'],
    registers: [registry],
    collect() {
      for (const [action, now] of Object.entries(stats().aclDenied)) {
        this.inc({ action }, Math.max(0, now - (aclSeen.get(action) ?? 0)));
        aclSeen.set(action, now);
      }
    },
  });
  total('edgemux_hub_broker_client_errors_total', 'Clients the embedded broker closed for a packet it refuses (logged, rate-limited)', () => stats().brokerClientErrors);
  total('edgemux_hub_agent_device_limit_refused_total', 'Devices refused because their agent held maxDevicesPerAgent', () => stats().agentDeviceLimitRefused);
  gauge('edgemux_hub_tunnel_unauthenticated', 'Tunnel connections that have not been accepted with HELLO', () => stats().unauthenticated);
  total('edgemux_hub_tunnel_handshake_timeouts_total', 'Tunnel connections closed for not finishing the TLS handshake (or WebSocket upgrade) in time', () => stats().handshakeTimeouts);
  total(
    'edgemux_hub_tunnel_unauthenticated_refused_total',
    'Tunnel connections closed on accept because too many were unauthenticated',
    () => stats().unauthenticatedRefused,
  );
  total('edgemux_hub_messages_to_broker_total', 'MQTT packets from devices handed to brokers', () => counters.messagesToBroker);
  total('edgemux_hub_bytes_to_broker_total', 'Bytes of MQTT packets from devices handed to brokers', () => counters.bytesToBroker);
  total('edgemux_hub_messages_to_device_total', 'MQTT packets from brokers sent towards devices', () => counters.messagesToDevice);
  total('edgemux_hub_bytes_to_device_total', 'Bytes of MQTT packets from brokers sent towards devices', () => counters.bytesToDevice);
  total('edgemux_hub_resumes_total', 'Device streams that resumed on another tunnel', () => counters.resumes);
  total('edgemux_hub_slow_consumer_cutoffs_total', 'Device sessions ended because the device stopped reading', () => counters.slowConsumerCutoffs);
  const refusalsSeen = new Map<string, number>();
  new Counter({
    name: 'edgemux_hub_refusals_total',
    help: 'Devices, resumes and tunnels the hub refused, by reason',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      for (const [reason, now] of counters.refusals) {
        this.inc({ reason }, Math.max(0, now - (refusalsSeen.get(reason) ?? 0)));
        refusalsSeen.set(reason, now);
      }
    },
  });
  new Gauge({
    name: 'edgemux_hub_backend_up',
    help: '1 when the external broker answered its last health check or device connection',
    labelNames: ['route', 'broker'],
    registers: [registry],
    collect() {
      // Routes replaced by a reload must not linger as stale series.
      this.reset();
      for (const route of readiness().routes) {
        for (const broker of route.brokers) this.set({ route: route.route, broker: broker.url }, broker.healthy ? 1 : 0);
      }
    },
  });
  endCounter(registry, 'edgemux_hub_stream_ends_total', 'Device streams ended, by reason (docs/errors.md)', () => hub.streamEnds);
  endCounter(registry, 'edgemux_hub_tunnel_closes_total', 'Agent tunnels closed, by reason (docs/errors.md)', () => hub.tunnelEnds);
  return registry;
}

/** /readyz of the hub: 503 naming what is down. */
export function hubReadiness(hub: CloudHub): Readiness {
  const readiness = hub.readiness();
  return { ...readiness, sessions: hub.sessions.size };
}
