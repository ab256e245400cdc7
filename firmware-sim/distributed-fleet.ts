import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import type { FleetStats } from './device-fleet.js';
import { FleetConfigError, resolveFleetConfig, type FleetConfig, type FleetOptions } from './fleet-config.js';
import { planWorkerSlices } from './fleet-plan.js';
import { mergeReports, type MergedReports } from './report-merge.js';
import { summarize, type FleetRunSummary } from './run-summary.js';
import { FleetWorkerError, WorkerProcess, type WorkerHost } from './worker-process.js';

export const distributedFleetOptionsSchema = z
  .object({
    processes: z.int().min(1),
    /**
     * The compiled fleet-worker.js to fork. Workers run plain node, so this is
     * never a .ts file; the default is the fleet-worker.js next to this module,
     * which exists when this module itself runs from dist/.
     */
    workerPath: z.string().min(1).optional(),
    /** How often workers report and 'progress' is emitted. */
    reportIntervalMs: z.int().min(10).max(60_000).default(1000),
    /** Node start-up and module loading; slow on a machine already busy with other fleets. */
    readyTimeoutMs: z.int().min(1).default(30_000),
    /** Added to the fleet's stopTimeoutMs before workers that have not exited are killed. */
    stopGraceMs: z.int().min(0).default(3000),
    /** Node flags for the workers; the parent's are not passed on (a test runner's loaders would break them). */
    execArgv: z.array(z.string()).default([]),
  })
  .strict();

export type DistributedFleetSettings = z.output<typeof distributedFleetOptionsSchema>;

export interface FleetProgress {
  stats: FleetStats;
  /** Workers are starting or some devices have neither connected nor failed yet. */
  ramping: boolean;
  workersAlive: number;
}

export type DistributedFleetOptions = z.input<typeof distributedFleetOptionsSchema> & {
  /** Called every reportIntervalMs from start() until stop() has finished. */
  onProgress?: (progress: FleetProgress) => void;
};

export interface DistributedFleetEvents {
  progress: [progress: FleetProgress];
  /** A worker died or had to be killed; its counters stop at its last report. */
  'worker-lost': [index: number, pid: number, reason: string];
}

type DistributedState = 'idle' | 'forking' | 'ramping' | 'running' | 'stopping' | 'stopped';

/** Extra time allowed per device of a worker's slice for an orderly stop. */
const STOP_MS_PER_DEVICE = 1;
/** After SIGKILL the kernel reaps at once; this only bounds a pathological wait. */
const KILL_WAIT_MS = 2000;

function resolveSettings(options: Omit<DistributedFleetOptions, 'onProgress'>): DistributedFleetSettings {
  const result = distributedFleetOptionsSchema.safeParse(options);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const key = issue.code === 'unrecognized_keys' ? issue.keys[0] : String(issue.path[0] ?? '');
  const value = (options as Record<string, unknown>)[key];
  throw new FleetConfigError(key, `${key}: ${issue.message} (got ${JSON.stringify(value)})`);
}

/** Resolves true if `promise` settles within `ms`, false otherwise; never holds the process open. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(resolve, ms, false);
    timer.unref();
  });
  const settled = await Promise.race([promise.then(() => true), timeout]);
  clearTimeout(timer);
  return settled;
}

/**
 * One fleet spread over several worker processes (fleet-worker.ts), so that
 * each stays within its descriptor limit and the connect ramp uses more than
 * one core. The interface follows DeviceFleet: start() resolves when every
 * device has connected or failed, stop() sends DISCONNECT from every device,
 * and stats() aggregates the workers' latest reports.
 */
export class DistributedFleet extends EventEmitter<DistributedFleetEvents> {
  readonly config: FleetConfig;
  readonly settings: DistributedFleetSettings;
  /** Each worker's options, in worker order. */
  readonly slices: readonly FleetOptions[];

  private state: DistributedState = 'idle';
  private workers: WorkerProcess[] = [];
  private readonly host: WorkerHost;
  private startPromise: Promise<void> | null = null;
  private rampSettled: (() => void) | null = null;
  private stopPromise: Promise<void> | null = null;
  private progressTimer: NodeJS.Timeout | null = null;
  private rampStartedAt: number | null = null;
  private rampEndedAt: number | null = null;
  /** Merging decodes every worker's histograms, so it is done at most once per batch of reports. */
  private merged: MergedReports | null = null;
  private lostWorkers = 0;

  constructor(options: FleetOptions, distributed: DistributedFleetOptions) {
    super();
    const { onProgress, ...rest } = distributed;
    this.config = resolveFleetConfig(options);
    this.settings = resolveSettings(rest);
    if (this.settings.processes > this.config.devices) {
      throw new FleetConfigError(
        'processes',
        `processes: at most one per device (${this.config.devices}) (got ${this.settings.processes})`,
      );
    }
    this.slices = planWorkerSlices(options, this.settings.processes);
    // Every slice is checked here, so a bad one fails in the caller, not in a child.
    for (const slice of this.slices) resolveFleetConfig(slice);
    if (onProgress !== undefined) this.on('progress', onProgress);
    this.host = {
      reported: () => this.onReport(),
      exited: (worker) => this.onWorkerExit(worker),
    };
  }

  /** The worker processes' ids, in worker order (empty before start()). */
  pids(): number[] {
    return this.workers.map((w) => w.pid);
  }

  /** Each worker's latest stats, in worker order; null before its first report. */
  workerStats(): (FleetStats | null)[] {
    return this.workers.map((w) => w.report?.stats ?? null);
  }

  /**
   * Forks the workers, waits until all are ready, then starts them together
   * and resolves once every worker's devices have connected or failed (or
   * stop() was called). Rejects with FleetWorkerError if a worker does not
   * come up; the others are stopped first.
   */
  start(): Promise<void> {
    if (this.startPromise !== null) return this.startPromise;
    if (this.state !== 'idle') throw new Error('a stopped fleet cannot be restarted');
    this.state = 'forking';
    this.startPromise = this.launch();
    return this.startPromise;
  }

  /** DISCONNECTs every device, waits for the workers to exit (bounded), then kills those left. */
  stop(): Promise<void> {
    this.stopPromise ??= this.stopAll();
    return this.stopPromise;
  }

  stats(): FleetStats {
    this.merged ??= mergeReports(
      this.workers.flatMap((w) => (w.report === null ? [] : [w.report])),
      this.rampMs(),
    );
    // Workers that never reported still own their devices.
    return { ...this.merged.stats, devices: this.config.devices, rampMs: this.rampMs() };
  }

  progress(): FleetProgress {
    return {
      stats: this.stats(),
      ramping: this.state === 'forking' || this.state === 'ramping',
      workersAlive: this.workers.filter((w) => w.alive).length,
    };
  }

  summary(): FleetRunSummary {
    const stats = this.stats();
    const merged = this.merged!;
    return summarize(stats, {
      processes: this.settings.processes,
      peakRssBytes: this.workers.reduce((sum, w) => sum + w.peakRssBytes, 0),
      lostWorkers: this.lostWorkers,
      connectFailureReasons: merged.connectFailureReasons.toJSON(),
      disconnectReasons: merged.disconnectReasons.toJSON(),
    });
  }

  // --- lifecycle ---------------------------------------------------------

  private async launch(): Promise<void> {
    const workerPath = this.settings.workerPath ?? fileURLToPath(new URL('./fleet-worker.js', import.meta.url));
    if (!existsSync(workerPath)) {
      this.state = 'stopped';
      throw new FleetWorkerError(`no compiled worker at ${workerPath}: build with tsc, or pass workerPath`);
    }
    const { execArgv, readyTimeoutMs, reportIntervalMs } = this.settings;
    this.workers = this.slices.map((_, i) => new WorkerProcess(i, workerPath, execArgv, readyTimeoutMs, this.host));
    try {
      await Promise.all(this.workers.map((w) => w.ready));
    } catch (err) {
      // stop() during start-up kills workers still loading: expected, not a failure.
      if (this.state !== 'forking') return;
      await this.stop();
      throw err;
    }
    if (this.state !== 'forking') return;
    this.state = 'ramping';
    // Timed from here, not from fork: node start-up is not part of the connect ramp.
    this.rampStartedAt = performance.now();
    this.progressTimer = setInterval(() => this.emitProgress(), reportIntervalMs);
    const ramped = new Promise<void>((resolve) => {
      this.rampSettled = resolve;
    });
    this.workers.forEach((w, i) => w.start(this.slices[i], reportIntervalMs));
    await ramped;
  }

  private async stopAll(): Promise<void> {
    this.state = 'stopping';
    this.endRamp();
    for (const worker of this.workers) worker.requestStop();
    const allClosed = Promise.all(this.workers.map((w) => w.closed));
    // Tens of thousands of DISCONNECTs at once keep the broker (and the
    // machine) busy for a while: the wait grows with the largest slice.
    const largestSlice = Math.max(0, ...this.slices.map((slice) => slice.devices));
    const stopWindowMs = this.config.stopTimeoutMs + this.settings.stopGraceMs + largestSlice * STOP_MS_PER_DEVICE;
    if (!(await settlesWithin(allClosed, stopWindowMs))) {
      for (const worker of this.workers) {
        if (!worker.alive) continue;
        // Its devices were being stopped on purpose: they are not lost, only slow to leave.
        worker.kill();
        this.emit('worker-lost', worker.index, worker.pid, `did not exit within ${stopWindowMs} ms of stop; killed`);
      }
      await settlesWithin(allClosed, KILL_WAIT_MS);
    }
    if (this.progressTimer !== null) clearInterval(this.progressTimer);
    this.progressTimer = null;
    this.merged = null;
    this.state = 'stopped';
  }

  private rampMs(): number {
    if (this.rampStartedAt === null) return 0;
    return (this.rampEndedAt ?? performance.now()) - this.rampStartedAt;
  }

  private endRamp(): void {
    if (this.rampStartedAt !== null) this.rampEndedAt ??= performance.now();
    this.rampSettled?.();
    this.rampSettled = null;
  }

  // --- worker callbacks --------------------------------------------------

  private onReport(): void {
    this.merged = null;
    if (this.state !== 'ramping') return;
    if (this.workers.every((w) => !w.alive || w.report?.ramped === true)) {
      this.state = 'running';
      this.endRamp();
    }
  }

  private onWorkerExit(worker: WorkerProcess): void {
    if (this.state !== 'stopping' && this.state !== 'stopped' && worker.state !== 'forked') {
      const { code, signal } = worker.exit!;
      const why = worker.failure ?? `exited (code ${code}, signal ${signal})`;
      this.loseWorker(worker, why);
    }
    // A dead worker's ramp is over too; do not wait for it.
    this.onReport();
  }

  private loseWorker(worker: WorkerProcess, reason: string): void {
    this.lostWorkers++;
    worker.markLost('worker process lost');
    this.merged = null;
    this.emit('worker-lost', worker.index, worker.pid, reason);
  }

  private emitProgress(): void {
    this.emit('progress', this.progress());
  }
}

export interface DistributedRun {
  /** The fleet as it stood when the connect ramp ended. */
  readonly summary: FleetRunSummary;
  readonly fleet: DistributedFleet;
  /** Stops the fleet (see DistributedFleet.stop) and resolves with the final summary. */
  stop(): Promise<FleetRunSummary>;
}

/**
 * Starts a distributed fleet and resolves once its connect ramp is over.
 * For bench code: `const run = await runDistributedFleet(opts, { processes: 4 });
 * ...; const final = await run.stop();`. If start fails, the workers are
 * stopped before the promise rejects.
 */
export async function runDistributedFleet(
  options: FleetOptions,
  distributed: DistributedFleetOptions,
): Promise<DistributedRun> {
  const fleet = new DistributedFleet(options, distributed);
  try {
    await fleet.start();
  } catch (err) {
    await fleet.stop();
    throw err;
  }
  return {
    summary: fleet.summary(),
    fleet,
    stop: async () => {
      await fleet.stop();
      return fleet.summary();
    },
  };
}
