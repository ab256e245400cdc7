import { type ChildProcess, fork, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { RpcResponse } from './rpc.js';

/** Node flags every bench child gets: a handle on GC for memory readings, and orphan protection. */
export const PRELOAD = fileURLToPath(new URL('./preload.js', import.meta.url));
export const NODE_CHILD_FLAGS = ['--expose-gc', '--import', PRELOAD];

const LOG_TAIL_LINES = 60;
const STOP_GRACE_MS = 5000;
const KILL_WAIT_MS = 3000;
const READY_TIMEOUT_MS = 20_000;

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A child process of the run: its output is kept (a tail), its end is awaited, it is always stopped. */
export class ManagedProcess {
  readonly pid: number;
  exitInfo: ExitInfo | null = null;
  readonly exited: Promise<ExitInfo>;
  /** Lines the child wrote, and how many of them were pino warnings or worse. */
  lines = 0;
  warnings = 0;
  /** Processes this one started on our behalf (the real mosquitto behind its guard). */
  readonly extraPids: number[] = [];
  private readonly tail: string[] = [];

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
    private readonly registry: ProcessRegistry,
  ) {
    if (child.pid === undefined) throw new Error(`${name}: could not start`);
    this.pid = child.pid;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        registry.forget(this);
        resolve(this.exitInfo);
      });
    });
    for (const stream of [child.stdout, child.stderr]) {
      if (stream === null || stream === undefined) continue;
      createInterface({ input: stream }).on('line', (line) => this.onLine(line));
    }
  }

  get alive(): boolean {
    return this.exitInfo === null;
  }

  logTail(): string {
    return this.tail.join('\n');
  }

  /** SIGTERM, then SIGKILL after the grace period; resolves once the process is gone. */
  async stop(graceMs = STOP_GRACE_MS): Promise<ExitInfo> {
    if (this.exitInfo !== null) return this.exitInfo;
    this.signal('SIGTERM');
    const timedOut = await Promise.race([this.exited.then(() => false), sleep(graceMs, true).then(() => true)]);
    if (timedOut) {
      this.signal('SIGKILL');
      await Promise.race([this.exited, sleep(KILL_WAIT_MS, true)]);
    }
    for (const pid of this.extraPids) killQuietly(pid, 'SIGKILL');
    return this.exitInfo ?? { code: null, signal: 'SIGKILL' };
  }

  signal(signal: NodeJS.Signals): void {
    if (this.exitInfo === null) killQuietly(this.pid, signal);
  }

  /** Asks a child started with NODE_CHILD_FLAGS to run a full GC (see preload.ts). */
  requestGc(): void {
    this.signal('SIGUSR2');
  }

  private onLine(line: string): void {
    this.lines++;
    if (/"level":(4|5|6)\d/.test(line) || /^(Error|TypeError|RangeError)|ERR_|uncaught/i.test(line)) this.warnings++;
    this.tail.push(line.length > 400 ? `${line.slice(0, 400)}…` : line);
    if (this.tail.length > LOG_TAIL_LINES) this.tail.shift();
    if (this.registry.verbose) process.stderr.write(`[${this.name}] ${line}\n`);
  }
}

/** A forked bench process that serves RPC (see rpc.ts). */
export class RpcProcess extends ManagedProcess {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  readonly ready: Promise<void>;

  constructor(name: string, child: ChildProcess, registry: ProcessRegistry) {
    super(name, child, registry);
    this.ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${name}: not ready within ${READY_TIMEOUT_MS} ms\n${this.logTail()}`)), READY_TIMEOUT_MS);
      child.on('message', (message: unknown) => {
        const m = message as { rpc?: string };
        if (m.rpc === 'ready') {
          clearTimeout(timer);
          resolve();
        } else if (m.rpc === 'result') {
          this.settle(message as RpcResponse);
        }
      });
      void this.exited.then((info) => {
        clearTimeout(timer);
        const error = new Error(`${name} exited (code ${info.code}, signal ${info.signal})\n${this.logTail()}`);
        reject(error);
        for (const [id, call] of this.pending) {
          clearTimeout(call.timer);
          call.reject(error);
          this.pending.delete(id);
        }
      });
    });
    this.ready.catch(() => undefined);
  }

  call<T>(method: string, params: unknown = {}, timeoutMs = 30_000): Promise<T> {
    if (!this.alive || !this.child.connected) return Promise.reject(new Error(`${this.name}: not running (calling ${method})`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${this.name}: ${method} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.child.send({ rpc: 'call', id, method, params });
    });
  }

  private settle(response: RpcResponse): void {
    const call = this.pending.get(response.id);
    if (call === undefined) return;
    this.pending.delete(response.id);
    clearTimeout(call.timer);
    if (response.ok) call.resolve(response.result);
    else call.reject(new Error(`${this.name}: ${response.error}`));
  }
}

/**
 * Every process the run starts goes through here, so that all of them are
 * stopped at the end, on failure and on SIGINT/SIGTERM.
 */
export class ProcessRegistry {
  private readonly live = new Set<ManagedProcess>();
  verbose = process.env.BENCH_VERBOSE === '1';

  get count(): number {
    return this.live.size;
  }

  /** A node program (hub, agent CLI) with the bench preload. */
  spawnNode(name: string, script: string, args: string[], nodeFlags: string[] = []): ManagedProcess {
    const child = spawn(process.execPath, [...NODE_CHILD_FLAGS, ...nodeFlags, script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    return this.track(new ManagedProcess(name, child, this));
  }

  /** A bench module that serves RPC; resolves once it said it is ready. */
  async forkRpc(name: string, moduleUrl: URL, args: string[] = [], nodeFlags: string[] = []): Promise<RpcProcess> {
    const child = fork(fileURLToPath(moduleUrl), args, {
      execArgv: [...NODE_CHILD_FLAGS, ...nodeFlags],
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    const proc = this.track(new RpcProcess(name, child, this));
    await proc.ready;
    return proc;
  }

  forget(proc: ManagedProcess): void {
    this.live.delete(proc);
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.live].map((p) => p.stop(2000)));
  }

  /** Last resort from process 'exit': no waiting possible, so SIGKILL everything still known. */
  killAllNow(): void {
    for (const proc of this.live) {
      killQuietly(proc.pid, 'SIGKILL');
      for (const pid of proc.extraPids) killQuietly(pid, 'SIGKILL');
    }
  }

  private track<P extends ManagedProcess>(proc: P): P {
    this.live.add(proc);
    return proc;
  }
}

export function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** `unref`: the timer does not keep the bench alive (for timeouts raced against something else). */
export function sleep(ms: number, unref = false): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (unref) timer.unref();
  });
}

/** Resident set size of a process in KiB, from /proc/PID/status (VmRSS); NaN when it is gone. */
export function rssKiB(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    return match ? Number(match[1]) : NaN;
  } catch {
    return NaN;
  }
}

/** Open file descriptors of a process (sockets included). */
export function fdCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return NaN;
  }
}

/** CPU time a process has used so far (user + system), in ms, from /proc/PID/stat; NaN when it is gone. */
export function cpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return NaN;
  }
}

/** USER_HZ: 100 on every Linux this runs on (getconf CLK_TCK). */
const CLOCK_TICKS_PER_SECOND = 100;

/** Kernel TCP counters (TcpExt in /proc/net/netstat), e.g. ListenOverflows, TCPSynRetrans. */
export function tcpExtCounters(): Record<string, number> {
  try {
    const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n').filter((l) => l.startsWith('TcpExt:'));
    if (lines.length < 2) return {};
    const names = lines[0].split(/\s+/).slice(1);
    const values = lines[1].split(/\s+/).slice(1).map(Number);
    return Object.fromEntries(names.map((n, i) => [n, values[i]]));
  } catch {
    return {};
  }
}

/** Whole-machine CPU time so far, in ms of core time: busy (user+nice+system+irq+softirq) and stolen by the hypervisor. */
export function machineCpuMs(): { busy: number; steal: number } {
  try {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const [user, nice, system, , , irq, softirq, steal] = fields;
    const toMs = (ticks: number): number => (ticks * 1000) / CLOCK_TICKS_PER_SECOND;
    return { busy: toMs(user + nice + system + irq + softirq), steal: toMs(steal) };
  } catch {
    return { busy: NaN, steal: NaN };
  }
}

/** Direct children of a process (the workers of a node:cluster primary). */
export function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** RSS of a process and all its children (KiB). */
export function treeRssKiB(pid: number): number {
  return rssKiB(pid) + childPids(pid).reduce((sum, child) => sum + treeRssKiB(child), 0);
}

/** Open descriptors of a process and all its children. */
export function treeFdCount(pid: number): number {
  return fdCount(pid) + childPids(pid).reduce((sum, child) => sum + treeFdCount(child), 0);
}
