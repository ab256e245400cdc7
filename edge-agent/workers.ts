import cluster, { type Worker } from 'node:cluster';
import type { Logger } from '../shared/logger.js';

/** Environment variable telling a forked worker its index. */
export const WORKER_INDEX_ENV = 'EDGEMUX_AGENT_WORKER';

/** A worker that dies is restarted after this long; more than RESTART_BUDGET deaths a minute stop the agent. */
const RESTART_DELAY_MS = 1000;
const RESTART_BUDGET = 10;

/**
 * The primary passes a reload on as an IPC message rather than a signal: a
 * worker still loading its modules has no SIGHUP handler yet and would die
 * of the signal, while a message it cannot hear yet is only lost.
 */
const RELOAD_MESSAGE = 'edgemux:reload';
/** SIGUSR1 is passed on the same way, for the same reason: the signal itself would start a worker's inspector. */
const REOPEN_LOG_MESSAGE = 'edgemux:reopen-log';
/** From a worker whose log file passed logMaxBytes: the primary alone renames the files every worker appends to. */
const ROTATE_LOG_MESSAGE = 'edgemux:rotate-log';

/** In a worker, calls `reload` or `reopenLog` whenever the primary passes a SIGHUP or SIGUSR1 on. */
export function onReloadFromPrimary(reload: () => void, reopenLog: () => void): void {
  process.on('message', (message) => {
    if (message === RELOAD_MESSAGE) reload();
    else if (message === REOPEN_LOG_MESSAGE) reopenLog();
  });
}

/** In a worker, asks the primary to rotate the shared log file (it then has every process reopen it). */
export function requestLogRotation(): void {
  process.send?.(ROTATE_LOG_MESSAGE);
}

export interface WorkerSupervisor {
  /** Asks every running worker to reload its configuration; returns how many were asked. */
  reloadWorkers(): number;
  /** Asks every running worker to reopen its log file; returns how many were asked. */
  reopenLogs(): number;
}

export function workerIndex(): number | null {
  const value = process.env[WORKER_INDEX_ENV];
  return cluster.isWorker && value !== undefined ? Number(value) : null;
}

/**
 * Runs the agent as `count` processes sharing the device listener
 * (node:cluster), so one agent uses every core of the edge box and holds
 * more devices than one process' descriptor limit. Each worker keeps its own
 * tunnels and streams; the hub tells them apart by worker index.
 */
export function superviseWorkers(count: number, log: Logger, rotateLog: () => void = () => {}): WorkerSupervisor {
  const deaths: number[] = [];
  let stopping = false;
  const fork = (index: number): Worker => {
    const worker = cluster.fork({ [WORKER_INDEX_ENV]: String(index) });
    worker.on('message', (message) => {
      if (message === ROTATE_LOG_MESSAGE) rotateLog();
    });
    worker.on('exit', (code, signal) => {
      if (stopping) return;
      const now = Date.now();
      deaths.push(now);
      while (deaths.length > 0 && now - deaths[0] > 60_000) deaths.shift();
      log.error({ worker: index, code, signal }, 'agent worker died');
      if (deaths.length > RESTART_BUDGET) {
        log.fatal({ deaths: deaths.length }, 'agent workers keep dying; stopping');
        stopAll(1);
        return;
      }
      setTimeout(() => fork(index), RESTART_DELAY_MS);
    });
    return worker;
  };
  const stopAll = (exitCode: number): void => {
    stopping = true;
    const workers = Object.values(cluster.workers ?? {}).filter((worker): worker is Worker => worker !== undefined);
    let alive = workers.length;
    if (alive === 0) process.exit(exitCode);
    for (const worker of workers) {
      worker.once('exit', () => {
        if (--alive === 0) process.exit(exitCode);
      });
      worker.process.kill('SIGTERM');
    }
    setTimeout(() => process.exit(exitCode), 10_000).unref();
  };
  for (let index = 0; index < count; index++) fork(index);
  log.info({ workers: count }, 'agent workers started');
  process.on('SIGINT', () => stopAll(0));
  process.on('SIGTERM', () => stopAll(0));
  const tellWorkers = (message: string): number => {
    const workers = Object.values(cluster.workers ?? {}).filter((worker): worker is Worker => worker !== undefined && worker.isConnected());
    for (const worker of workers) worker.send(message);
    return workers.length;
  };
  return {
    reloadWorkers: () => tellWorkers(RELOAD_MESSAGE),
    reopenLogs: () => tellWorkers(REOPEN_LOG_MESSAGE),
  };
}
