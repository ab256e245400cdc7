/** What the scenarios share: load generators, the subscriber, source addresses, time budget. */
import type { FleetStats } from '../firmware-sim/device-fleet.js';
import type { FleetOptions } from '../firmware-sim/fleet-config.js';
import type { ConnectRamp, LoadgenStartParams } from './loadgen.js';
import { cpuMs, machineCpuMs, type RpcProcess, sleep } from './procs.js';
import type { Results } from './results-table.js';
import type { SubscriberReading } from './subscriber.js';
import { type BenchContext, HOST } from './systems.js';

/** Sockets one generator process may hold: below the 20 000 descriptor limit with room for the rest. */
export const MAX_DEVICES_PER_GENERATOR = 18_000;
/**
 * Devices per source address. Binding a source address makes the kernel
 * pick the port at bind() time, and that search gets slow as an address
 * fills up: a 10 000-device storm from one address took 6.6 s where ten
 * addresses took 1.5 s (Mosquitto as the server). Far below the 28 000
 * ephemeral ports (32768–60999) per address.
 */
const DEVICES_PER_ADDRESS = 1000;

/**
 * Hands out loopback source addresses 127.0.0.2, .3, ... never twice in a
 * run, so the TIME_WAIT sockets a finished fleet leaves behind never
 * collide with the next fleet's ports.
 */
export class AddressPool {
  private next = 2;

  take(devices: number): string[] {
    const count = Math.max(1, Math.ceil(devices / DEVICES_PER_ADDRESS));
    const out: string[] = [];
    for (let i = 0; i < count; i++) {
      let n = this.next++;
      // Skip .0 and .255 in every /24.
      while (n % 256 === 0 || n % 256 === 255) n = this.next++;
      out.push(`127.0.${(n >> 8) & 255}.${n & 255}`);
    }
    return out;
  }
}

export class Budget {
  private readonly start = Date.now();
  /** Time kept for the scenarios still to come: the current one may not use it. */
  private reserveMs = 0;

  constructor(private readonly limitMs: number) {}

  reserve(ms: number): void {
    this.reserveMs = ms;
  }

  get elapsedMs(): number {
    return Date.now() - this.start;
  }

  get leftMs(): number {
    return this.limitMs - this.elapsedMs - this.reserveMs;
  }

  /** True when `needMs` more still fits. */
  allows(needMs: number): boolean {
    return this.leftMs >= needMs;
  }
}

export interface Harness extends BenchContext {
  addresses: AddressPool;
  results: Results;
  budget: Budget;
  /** How long to wait for the machine to go quiet before a measurement (other sessions share it). */
  quietWaitMs: number;
  /** How many times a measurement disturbed by other load is repeated. */
  retries: number;
  runId: number;
  /** A fresh client-id prefix, so no fleet ever takes over a session another left behind. */
  prefix(tag: string): string;
}

export class Loadgen {
  private constructor(
    readonly proc: RpcProcess,
    readonly ramp: ConnectRamp,
  ) {}

  /** Forks a generator process without starting a fleet in it (see startOn). */
  static fork(h: Harness, name: string): Promise<RpcProcess> {
    return h.registry.forkRpc(name, new URL('./loadgen.js', import.meta.url));
  }

  /** Forks a generator and connects its fleet; resolves once every device is ready or failed. */
  static async start(h: Harness, name: string, options: FleetOptions, extra: Omit<LoadgenStartParams, 'options'> = {}, timeoutMs = 120_000): Promise<Loadgen> {
    return Loadgen.startOn(await Loadgen.fork(h, name), options, extra, timeoutMs);
  }

  /** Connects a fleet in an already forked generator; stops the process if that fails. */
  static async startOn(proc: RpcProcess, options: FleetOptions, extra: Omit<LoadgenStartParams, 'options'> = {}, timeoutMs = 120_000): Promise<Loadgen> {
    try {
      const ramp = await proc.call<ConnectRamp>('start', { options, ...extra }, timeoutMs);
      return new Loadgen(proc, ramp);
    } catch (err) {
      await proc.stop();
      throw err;
    }
  }

  /** Forks a generator and starts its fleet without waiting for the ramp (for many generators at once). */
  static async launch(h: Harness, name: string, options: FleetOptions, extra: Omit<LoadgenStartParams, 'options'> = {}, timeoutMs = 300_000): Promise<{ proc: RpcProcess; ramp: Promise<ConnectRamp> }> {
    const proc = await h.registry.forkRpc(name, new URL('./loadgen.js', import.meta.url));
    return { proc, ramp: proc.call<ConnectRamp>('start', { options, ...extra }, timeoutMs) };
  }

  stats(): Promise<FleetStats & { disconnectReasons: Record<string, number> }> {
    return this.proc.call('stats');
  }

  /** Starts publishing; resolves with how far payload stamps run behind real time (ms). */
  release(): Promise<number> {
    return this.proc.call('release');
  }

  pause(): Promise<FleetStats> {
    return this.proc.call('pause');
  }

  /** Disconnects every device and ends the process. */
  async stop(): Promise<FleetStats | null> {
    let stats: FleetStats | null = null;
    try {
      stats = await this.proc.call<FleetStats | null>('stop', {}, 30_000);
    } catch {
      // the process is stopped below either way
    }
    await this.proc.stop();
    return stats;
  }
}

export class Subscriber {
  private constructor(readonly proc: RpcProcess) {}

  static async start(h: Harness, port: number, qos: 0 | 1, filter = 'devices/+/telemetry'): Promise<Subscriber> {
    const proc = await h.registry.forkRpc('subscriber', new URL('./subscriber.js', import.meta.url));
    try {
      await proc.call('connect', { host: HOST, port, qos, filter, clientId: `bench-sub-${h.runId}-${proc.pid}` });
      return new Subscriber(proc);
    } catch (err) {
      await proc.stop();
      throw err;
    }
  }

  /** Port on which the subscriber streams its delivery count (for a load generator's window). */
  feedback(): Promise<number> {
    return this.proc.call('feedback');
  }

  /** Payload stamps run this far behind real time (a fleet held before it published). */
  clockOffset(ms: number): Promise<void> {
    return this.proc.call('clockOffset', ms);
  }

  mark(): Promise<SubscriberReading> {
    return this.proc.call('mark');
  }

  read(): Promise<SubscriberReading> {
    return this.proc.call('read');
  }

  async stop(): Promise<void> {
    await this.proc.call('close').catch(() => undefined);
    await this.proc.stop();
  }
}

/** Polls `condition` every 50 ms until it holds or `timeoutMs` passes; returns whether it held. */
export async function waitUntil(condition: () => Promise<boolean> | boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await condition()) return true;
    await sleep(50);
  }
  return false;
}

/** Share of one core, busy outside our own processes, above which the machine does not count as quiet. */
export const QUIET_PCT = 25;
const QUIET_SAMPLE_MS = 300;

/**
 * Waits (at most h.quietWaitMs) until the machine is quiet: less than
 * QUIET_PCT of a core busy or stolen besides the processes we know of, which
 * are idle between measurements. Other sessions may run tests on the same
 * 2 cores; measuring over them would measure them.
 */
export async function waitForQuiet(h: Harness, ourPids: number[]): Promise<{ waitedMs: number; lastPct: number }> {
  const t0 = Date.now();
  let lastPct = 0;
  if (h.quietWaitMs <= 0) return { waitedMs: 0, lastPct };
  do {
    const m0 = machineCpuMs();
    const o0 = ourPids.reduce((sum, pid) => sum + (cpuMs(pid) || 0), 0) + process.cpuUsage().user / 1000 + process.cpuUsage().system / 1000;
    await sleep(QUIET_SAMPLE_MS);
    const m1 = machineCpuMs();
    const o1 = ourPids.reduce((sum, pid) => sum + (cpuMs(pid) || 0), 0) + process.cpuUsage().user / 1000 + process.cpuUsage().system / 1000;
    lastPct = Math.round(((m1.busy - m0.busy - (o1 - o0) + (m1.steal - m0.steal)) / QUIET_SAMPLE_MS) * 100);
    if (lastPct < QUIET_PCT) return { waitedMs: Date.now() - t0, lastPct };
  } while (Date.now() - t0 < h.quietWaitMs);
  return { waitedMs: Date.now() - t0, lastPct };
}

/** Runs `fn` and records an error as a note instead of aborting the whole run. */
export async function guarded(h: Harness, scenario: string, what: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    h.results.note(scenario, `${what} failed: ${message.split('\n').slice(0, 6).join(' | ')}`);
    h.progress(`!! ${scenario} ${what} failed: ${message}`);
  }
}
