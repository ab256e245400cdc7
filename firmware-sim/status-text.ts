import type { FleetStats } from './device-fleet.js';

/** One second of a run as the CLI shows it. */
export interface StatusSample {
  stats: FleetStats;
  processes: number;
  connectsPerSec: number;
  sentPerSec: number;
}

const BAR_WIDTH = 30;

/** `[██████░░░░]`: settled (connected or failed) devices out of all. */
export function rampBar(settled: number, total: number, width = BAR_WIDTH): string {
  const filled = total > 0 ? Math.min(width, Math.floor((settled / total) * width)) : width;
  return `[${'█'.repeat(filled)}${'░'.repeat(width - filled)}]`;
}

export function rampText(sample: StatusSample, withBar: boolean): string {
  const { stats } = sample;
  const settled = stats.connects + stats.connectFailures;
  const percent = stats.devices > 0 ? Math.floor((settled * 100) / stats.devices) : 100;
  return (
    `ramp ${withBar ? `${rampBar(settled, stats.devices)} ` : ''}${percent}%  ` +
    `connected ${stats.connected}/${stats.devices}  ${Math.round(sample.connectsPerSec)} connects/s  ` +
    `failures ${stats.connectFailures}  ${(stats.rampMs / 1000).toFixed(1)} s`
  );
}

export function runText(sample: StatusSample): string {
  const { stats } = sample;
  return (
    `connected ${stats.connected}/${stats.devices}  sent/s ${Math.round(sample.sentPerSec)}  ` +
    `acked ${stats.acked}  received ${stats.received}  skipped ${stats.skipped}  ` +
    `disconnects ${stats.disconnects}  failures ${stats.connectFailures}  ` +
    `ack p99 ${stats.publishAckP99Ms.toFixed(2)} ms`
  );
}

export function statusJson(sample: StatusSample, ramping: boolean): string {
  return JSON.stringify({
    type: 'status',
    phase: ramping ? 'ramp' : 'run',
    processes: sample.processes,
    ...sample.stats,
    connectsPerSec: Math.round(sample.connectsPerSec),
    sentPerSec: Math.round(sample.sentPerSec),
  });
}
