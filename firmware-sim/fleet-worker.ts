#!/usr/bin/env node
/**
 * One process of a distributed fleet: runs a DeviceFleet for the slice its
 * parent sends and reports on it over IPC (protocol in worker-protocol.ts).
 * Forked by distributed-fleet.ts; not meant to be started by hand.
 */
import { DeviceFleet } from './device-fleet.js';
import type { LatencyHistogram } from './latency-histogram.js';
import { ReasonTally } from './reason-tally.js';
import { residentSetBytes } from './run-support.js';
import {
  isParentMessage,
  type StartMessage,
  type WorkerMessage,
  type WorkerReport,
} from './worker-protocol.js';

/** Beyond the fleet's own bounded stop: nobody may be left to SIGKILL us if the parent is gone. */
const EXIT_GUARD_EXTRA_MS = 3000;

type WorkerState = 'waiting' | 'running' | 'stopping';

/** Re-encodes a histogram only when it gained samples: encoding costs milliseconds, reports come every second. */
class EncodedHistogram {
  private count = -1;
  private encoded = '';

  constructor(private readonly histogram: LatencyHistogram) {}

  get(): string {
    if (this.histogram.count !== this.count) {
      this.count = this.histogram.count;
      this.encoded = this.histogram.encode();
    }
    return this.encoded;
  }
}

class FleetWorker {
  private state: WorkerState = 'waiting';
  private fleet: DeviceFleet | null = null;
  private ramped = false;
  private reportTimer: NodeJS.Timeout | null = null;
  private publishAck: EncodedHistogram | null = null;
  private command: EncodedHistogram | null = null;
  private readonly connectFailureReasons = new ReasonTally();
  private readonly disconnectReasons = new ReasonTally();

  constructor(private readonly send: (message: WorkerMessage, done?: () => void) => void) {}

  /** waiting → running */
  start(message: StartMessage): void {
    if (this.state !== 'waiting') return;
    let fleet: DeviceFleet;
    try {
      fleet = new DeviceFleet(message.options);
    } catch (err) {
      this.send({ type: 'failed', error: (err as Error).message }, () => process.exit(2));
      return;
    }
    this.state = 'running';
    this.fleet = fleet;
    const histograms = fleet.latencyHistograms();
    this.publishAck = new EncodedHistogram(histograms.publishAck);
    this.command = new EncodedHistogram(histograms.command);
    fleet.on('connect-failure', (_id, reason) => this.connectFailureReasons.add(reason));
    fleet.on('disconnect', (_id, reason) => this.disconnectReasons.add(reason));
    this.reportTimer = setInterval(() => this.report('report'), message.reportIntervalMs);
    void fleet.start().then(() => {
      this.ramped = true;
      // At once rather than at the next tick, so the parent times the ramp to the millisecond.
      if (this.state === 'running') this.report('report');
    });
  }

  /** running|waiting → stopping; exits the process when done. */
  async stop(parentGone: boolean): Promise<void> {
    if (this.state === 'stopping') return;
    this.state = 'stopping';
    const guardMs = (this.fleet?.config.stopTimeoutMs ?? 0) + EXIT_GUARD_EXTRA_MS;
    setTimeout(() => process.exit(1), guardMs).unref();
    if (this.reportTimer !== null) clearInterval(this.reportTimer);
    await this.fleet?.stop();
    if (this.fleet === null || parentGone || !process.connected) process.exit(0);
    this.report('stopped', () => process.exit(0));
  }

  private report(type: 'report' | 'stopped', done?: () => void): void {
    const fleet = this.fleet!;
    const report: WorkerReport = {
      stats: fleet.stats(),
      ramped: this.ramped,
      publishAckHistogram: this.publishAck!.get(),
      commandHistogram: this.command!.get(),
      connectFailureReasons: this.connectFailureReasons.toJSON(),
      disconnectReasons: this.disconnectReasons.toJSON(),
      rssBytes: residentSetBytes(),
    };
    if (process.connected) this.send({ type, report }, done);
    else done?.();
  }
}

if (process.send === undefined) {
  process.stderr.write('fleet-worker: must be forked by a distributed fleet (no IPC channel)\n');
  process.exit(2);
}
const send = process.send.bind(process);
const worker = new FleetWorker((message, done) => {
  send(message, undefined, undefined, done === undefined ? undefined : () => done());
});

// Ctrl-C in a terminal signals the whole process group. The parent
// orchestrates the stop, so the devices DISCONNECT and the last counters
// reach it; dying here would lose both.
process.on('SIGINT', () => {});
// The parent died or closed the channel: nobody will send 'stop'.
process.on('disconnect', () => void worker.stop(true));
process.on('message', (message: unknown) => {
  if (!isParentMessage(message)) return;
  if (message.type === 'start') worker.start(message);
  else void worker.stop(false);
});
send({ type: 'ready' } satisfies WorkerMessage);
