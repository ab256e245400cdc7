import { fork, type ChildProcess } from 'node:child_process';
import type { FleetOptions } from './fleet-config.js';
import { isWorkerMessage, type ParentMessage, type WorkerMessage, type WorkerReport } from './worker-protocol.js';

export interface WorkerExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** forked → ready → started → stopping → exited; any state may jump to exited. */
export type WorkerProcessState = 'forked' | 'ready' | 'started' | 'stopping' | 'exited';

/** What a worker handle tells its fleet. */
export interface WorkerHost {
  reported(worker: WorkerProcess): void;
  exited(worker: WorkerProcess): void;
}

/** A worker did not become ready, failed to start its fleet, or died. */
export class FleetWorkerError extends Error {
  readonly code = 'E_FLEET_WORKER';

  constructor(message: string) {
    super(message);
    this.name = 'FleetWorkerError';
  }
}

/**
 * The parent's handle on one fleet-worker process: forks it, keeps its
 * latest report and the peak of its memory, and ends it.
 */
export class WorkerProcess {
  state: WorkerProcessState = 'forked';
  readonly pid: number;
  /** Latest report; the final one once the worker stopped in order. */
  report: WorkerReport | null = null;
  peakRssBytes = 0;
  exit: WorkerExit | null = null;
  /** Why the worker said it could not start its fleet. */
  failure: string | null = null;
  /** Resolves on 'ready'; rejects if the worker exits first or is not ready in time. */
  readonly ready: Promise<void>;
  /** Resolves once the process is gone and every IPC message it sent has been handled. */
  readonly closed: Promise<WorkerExit>;

  private readonly child: ChildProcess;

  constructor(
    readonly index: number,
    workerPath: string,
    execArgv: string[],
    readyTimeoutMs: number,
    private readonly host: WorkerHost,
  ) {
    // stdout is dropped: the parent's stdout carries one JSON summary and nothing else.
    // stderr is shared so a crashing worker's stack trace reaches the user.
    this.child = fork(workerPath, [], { execArgv, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    if (this.child.pid === undefined) throw new FleetWorkerError(`worker ${index}: could not fork ${workerPath}`);
    this.pid = this.child.pid;
    this.child.on('error', () => {
      // 'error' here means a failed send or kill; 'close' reports the outcome.
    });
    // 'close' rather than 'exit': it comes after the IPC channel has delivered everything.
    this.closed = new Promise((resolve) => {
      this.child.once('close', (code, signal) => {
        this.exit = { code, signal };
        this.state = 'exited';
        this.host.exited(this);
        resolve(this.exit);
      });
    });
    this.ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new FleetWorkerError(`worker ${index} (pid ${this.pid}) not ready within ${readyTimeoutMs} ms`));
      }, readyTimeoutMs);
      this.child.on('message', (message: unknown) => {
        if (!isWorkerMessage(message)) return;
        if (message.type === 'ready') {
          clearTimeout(timer);
          if (this.state === 'forked') this.state = 'ready';
          resolve();
        } else {
          this.onMessage(message);
        }
      });
      void this.closed.then((exit) => {
        clearTimeout(timer);
        const how = `code ${exit.code}, signal ${exit.signal}`;
        reject(new FleetWorkerError(`worker ${index} (pid ${this.pid}) exited before it was ready (${how})`));
      });
    });
    // Rejections are reported through start(); an unobserved one must not crash the parent.
    this.ready.catch(() => undefined);
  }

  get alive(): boolean {
    return this.exit === null;
  }

  /** ready → started */
  start(options: FleetOptions, reportIntervalMs: number): void {
    if (this.state !== 'ready') return;
    this.state = 'started';
    this.send({ type: 'start', options, reportIntervalMs });
  }

  /**
   * → stopping. A worker that is not ready yet has no fleet and no listener
   * for 'stop' (its modules are still loading), so it is killed instead.
   */
  requestStop(): void {
    if (this.state === 'exited' || this.state === 'stopping') return;
    const wasForked = this.state === 'forked';
    this.state = 'stopping';
    if (wasForked) this.kill();
    else this.send({ type: 'stop' });
  }

  /**
   * The process died or was killed: the kernel closed its sockets, so the
   * devices its last report counted as connected are disconnects now. Its
   * other counters stand as last reported.
   */
  markLost(reason: string): void {
    if (this.report === null) return;
    const { stats, disconnectReasons } = this.report;
    if (stats.connected === 0) return;
    this.report = {
      ...this.report,
      stats: { ...stats, connected: 0, disconnects: stats.disconnects + stats.connected },
      disconnectReasons: { ...disconnectReasons, [reason]: (disconnectReasons[reason] ?? 0) + stats.connected },
    };
  }

  kill(): void {
    if (this.alive) this.child.kill('SIGKILL');
  }

  private send(message: ParentMessage): void {
    if (this.child.connected) this.child.send(message);
  }

  private onMessage(message: Exclude<WorkerMessage, { type: 'ready' }>): void {
    if (message.type === 'failed') {
      this.failure = message.error;
      return;
    }
    this.report = message.report;
    this.peakRssBytes = Math.max(this.peakRssBytes, message.report.rssBytes);
    this.host.reported(this);
  }
}
