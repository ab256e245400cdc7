/**
 * Messages between a distributed fleet (parent) and its fleet-worker
 * processes, over the node:child_process IPC channel (JSON serialisation).
 *
 *   parent                         worker
 *            <── ready               listeners attached; safe to send now
 *   start ──>                        builds a DeviceFleet, starts connecting
 *            <── report              every reportIntervalMs, and at once when its ramp ends
 *   stop  ──>                        DISCONNECT from every device
 *            <── stopped             last report; the worker exits after it
 *
 * The worker exits on its own when the channel closes (the parent died).
 */
import type { FleetStats } from './device-fleet.js';
import type { FleetOptions } from './fleet-config.js';

export interface StartMessage {
  type: 'start';
  options: FleetOptions;
  reportIntervalMs: number;
}

export interface StopMessage {
  type: 'stop';
}

export type ParentMessage = StartMessage | StopMessage;

export interface WorkerReport {
  stats: FleetStats;
  /** Every device of this worker has connected or failed (or stop came first). */
  ramped: boolean;
  /** LatencyHistogram.encode() of each distribution since the worker started. */
  publishAckHistogram: string;
  commandHistogram: string;
  connectFailureReasons: Record<string, number>;
  disconnectReasons: Record<string, number>;
  rssBytes: number;
}

export type WorkerMessage =
  | { type: 'ready' }
  | { type: 'report'; report: WorkerReport }
  | { type: 'stopped'; report: WorkerReport }
  | { type: 'failed'; error: string };

export function isParentMessage(message: unknown): message is ParentMessage {
  const type = (message as { type?: unknown } | null)?.type;
  return type === 'start' || type === 'stop';
}

export function isWorkerMessage(message: unknown): message is WorkerMessage {
  const type = (message as { type?: unknown } | null)?.type;
  return type === 'ready' || type === 'report' || type === 'stopped' || type === 'failed';
}
