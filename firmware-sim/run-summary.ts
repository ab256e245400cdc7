import type { FleetStats } from './device-fleet.js';

/** The end-of-run record, the same whether the fleet ran in one process or several. */
export interface FleetRunSummary {
  devices: number;
  processes: number;
  /** Devices that completed CONNACK and SUBACK at some point (FleetStats.connects). */
  connected: number;
  connectFailures: number;
  /** Connected devices per second of ramp. */
  connectsPerSec: number;
  rampSeconds: number;
  slowestConnectMs: number;
  sent: number;
  acked: number;
  skipped: number;
  received: number;
  replies: number;
  disconnects: number;
  malformed: number;
  rejected: number;
  publishAckP50Ms: number;
  publishAckP99Ms: number;
  commandP50Ms: number;
  commandP99Ms: number;
  /** Sum over the simulator processes of the highest resident set size each reported. */
  peakRssBytes: number;
  /** Worker processes that died or had to be killed; their counters stop at their last report. */
  lostWorkers: number;
  connectFailureReasons: Record<string, number>;
  disconnectReasons: Record<string, number>;
}

export interface SummaryContext {
  processes: number;
  peakRssBytes: number;
  lostWorkers: number;
  connectFailureReasons: Record<string, number>;
  disconnectReasons: Record<string, number>;
}

/** Microsecond resolution is all the histograms hold. */
function ms(value: number): number {
  return Number(value.toFixed(3));
}

export function summarize(stats: FleetStats, context: SummaryContext): FleetRunSummary {
  const rampSeconds = stats.rampMs / 1000;
  return {
    devices: stats.devices,
    processes: context.processes,
    connected: stats.connects,
    connectFailures: stats.connectFailures,
    connectsPerSec: rampSeconds > 0 ? Math.round(stats.connects / rampSeconds) : 0,
    rampSeconds: Number(rampSeconds.toFixed(3)),
    slowestConnectMs: ms(stats.slowestConnectMs),
    sent: stats.sent,
    acked: stats.acked,
    skipped: stats.skipped,
    received: stats.received,
    replies: stats.replies,
    disconnects: stats.disconnects,
    malformed: stats.malformed,
    rejected: stats.rejected,
    publishAckP50Ms: ms(stats.publishAckP50Ms),
    publishAckP99Ms: ms(stats.publishAckP99Ms),
    commandP50Ms: ms(stats.commandP50Ms),
    commandP99Ms: ms(stats.commandP99Ms),
    peakRssBytes: context.peakRssBytes,
    lostWorkers: context.lostWorkers,
    connectFailureReasons: context.connectFailureReasons,
    disconnectReasons: context.disconnectReasons,
  };
}
