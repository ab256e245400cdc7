import type { FleetStats } from './device-fleet.js';
import { LatencyHistogram } from './latency-histogram.js';
import { ReasonTally } from './reason-tally.js';
import type { WorkerReport } from './worker-protocol.js';

/** Counters that add up across processes; everything else in FleetStats is merged its own way. */
const SUMMED = [
  'devices',
  'connected',
  'connects',
  'connectFailures',
  'sent',
  'acked',
  'skipped',
  'received',
  'replies',
  'disconnects',
  'malformed',
  'rejected',
] as const satisfies readonly (keyof FleetStats)[];

export interface MergedReports {
  stats: FleetStats;
  connectFailureReasons: ReasonTally;
  disconnectReasons: ReasonTally;
}

/**
 * One fleet's view of several workers' latest reports. Latency percentiles
 * come from the union of the workers' HDR histograms: averaging or taking the
 * max of per-worker p99s would be wrong whenever workers see different load.
 * `rampMs` is the caller's wall-clock ramp, since workers start a few
 * milliseconds apart.
 */
export function mergeReports(reports: readonly WorkerReport[], rampMs: number): MergedReports {
  const stats: FleetStats = {
    devices: 0,
    connected: 0,
    connects: 0,
    connectFailures: 0,
    slowestConnectMs: 0,
    rampMs,
    sent: 0,
    acked: 0,
    skipped: 0,
    received: 0,
    replies: 0,
    disconnects: 0,
    malformed: 0,
    rejected: 0,
    publishAckP50Ms: 0,
    publishAckP99Ms: 0,
    commandP50Ms: 0,
    commandP99Ms: 0,
  };
  const publishAck = new LatencyHistogram();
  const command = new LatencyHistogram();
  const connectFailureReasons = new ReasonTally();
  const disconnectReasons = new ReasonTally();
  for (const report of reports) {
    for (const key of SUMMED) stats[key] += report.stats[key];
    stats.slowestConnectMs = Math.max(stats.slowestConnectMs, report.stats.slowestConnectMs);
    publishAck.addEncoded(report.publishAckHistogram);
    command.addEncoded(report.commandHistogram);
    connectFailureReasons.addAll(report.connectFailureReasons);
    disconnectReasons.addAll(report.disconnectReasons);
  }
  stats.publishAckP50Ms = publishAck.percentile(50);
  stats.publishAckP99Ms = publishAck.percentile(99);
  stats.commandP50Ms = command.percentile(50);
  stats.commandP99Ms = command.percentile(99);
  return { stats, connectFailureReasons, disconnectReasons };
}
