/**
 * One traffic run: a subscriber and a fleet of publishing devices against a
 * system, measured over a fixed window after a warm-up. Used at saturation
 * (throughput) and at a fixed rate (latency).
 */
import type { FleetStats } from '../firmware-sim/device-fleet.js';
import { type Harness, Loadgen, QUIET_PCT, Subscriber, waitForQuiet } from './harness.js';
import { cpuMs, machineCpuMs, sleep } from './procs.js';
import type { SubscriberReading } from './subscriber.js';
import { HOST, type System } from './systems.js';

export interface TrafficParams {
  devices: number;
  qos: 0 | 1;
  ratePerDevice: number;
  warmupMs: number;
  windowMs: number;
  tickMs?: number;
  maxInflight?: number;
  payloadSize?: number;
  /** End-to-end window of messages sent but not yet delivered (saturation runs); none at a fixed rate. */
  windowMessages?: number;
}

export interface TrafficResult {
  /** Telemetry messages the subscriber received per second over the window. */
  deliveredPerSec: number;
  /** Telemetry messages the devices sent per second over the window. */
  sentPerSec: number;
  reading: SubscriberReading;
  /** Share of one core each process used over the window, in percent. */
  cpuPct: Record<string, number>;
  /**
   * CPU the machine spent on anything but this run's processes and the
   * bench itself, and CPU stolen by the hypervisor, over the window (% of
   * one core): other work on the machine makes a run unreliable.
   */
  foreignPct: number;
  stealPct: number;
  fleet: FleetStats;
}

/**
 * trafficRun, repeated (at most h.retries times) while other load on the
 * machine disturbed the measurement; the result says how often.
 */
export async function steadyTrafficRun(h: Harness, system: System, tag: string, params: TrafficParams): Promise<TrafficResult & { attempts: number }> {
  for (let attempt = 1; ; attempt++) {
    const quiet = await waitForQuiet(h, Object.values(system.pids));
    if (quiet.lastPct >= QUIET_PCT) h.progress(`   (machine busy: ${quiet.lastPct}% of a core besides this run after waiting ${Math.round(quiet.waitedMs / 1000)} s; measuring anyway)`);
    const r = await trafficRun(h, system, tag, params);
    const disturbed = r.foreignPct >= QUIET_PCT || r.stealPct >= QUIET_PCT;
    if (!disturbed || attempt > h.retries) return { ...r, attempts: attempt };
    h.progress(`   (disturbed: other load ${r.foreignPct}%, steal ${r.stealPct}% of a core; measuring again)`);
  }
}

export async function trafficRun(h: Harness, system: System, tag: string, params: TrafficParams): Promise<TrafficResult> {
  const debug = process.env.BENCH_DEBUG === '1' ? (m: string) => h.progress(`   [${tag}] ${m}`) : () => undefined;
  // Fork the generator while the subscriber connects: process start-up is most of a short run's overhead.
  const loadgenProc = Loadgen.fork(h, 'loadgen');
  let subscriber: Subscriber;
  try {
    subscriber = await Subscriber.start(h, system.appPort, params.qos);
  } catch (err) {
    await (await loadgenProc.catch(() => null))?.stop();
    throw err;
  }
  debug('subscriber up');
  let loadgen: Loadgen | null = null;
  try {
    const window = params.windowMessages !== undefined ? { port: await subscriber.feedback(), messages: params.windowMessages } : undefined;
    loadgen = await Loadgen.startOn(await loadgenProc, {
      host: HOST,
      port: system.devicePort,
      devices: params.devices,
      clientIdPrefix: h.prefix(tag),
      ratePerDevice: params.ratePerDevice,
      qos: params.qos,
      payloadSize: params.payloadSize ?? 64,
      keepaliveSeconds: 60,
      sourceAddresses: h.addresses.take(params.devices),
      tickMs: params.tickMs ?? 10,
      maxInflight: params.maxInflight ?? 100,
      connectConcurrency: 500,
    }, { window, hold: true });
    if (loadgen.ramp.connected < params.devices) {
      throw new Error(`only ${loadgen.ramp.connected} of ${params.devices} devices connected: ${JSON.stringify(loadgen.ramp.failureReasons)}`);
    }
    debug(`fleet connected: ${JSON.stringify(loadgen.ramp)}`);
    // Every device is connected before any publishes: a broker busy with
    // traffic can otherwise starve the connects of the later devices.
    await subscriber.clockOffset(await loadgen.release());
    await sleep(params.warmupMs);
    const pids: Record<string, number> = { ...system.pids, loadgen: loadgen.proc.pid, subscriber: subscriber.proc.pid };
    const cpu0 = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuMs(pid)]));
    const machine0 = machineCpuMs();
    const self0 = process.cpuUsage();
    const before = await loadgen.stats();
    await subscriber.mark();
    const t0 = performance.now();
    await sleep(params.windowMs);
    const reading = await subscriber.read();
    const after = await loadgen.stats();
    const elapsed = performance.now() - t0;
    const used = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuMs(pid) - cpu0[k]]));
    const machine1 = machineCpuMs();
    const self = process.cpuUsage(self0);
    const ours = Object.values(used).reduce((a, b) => a + b, 0) + (self.user + self.system) / 1000;
    const cpuPct = Object.fromEntries(Object.entries(used).map(([k, ms]) => [k, Math.round((ms / elapsed) * 100)]));
    const foreignPct = Math.max(0, Math.round(((machine1.busy - machine0.busy - ours) / elapsed) * 100));
    const stealPct = Math.round(((machine1.steal - machine0.steal) / elapsed) * 100);
    if (after.disconnects > 0) throw new Error(`${after.disconnects} devices were disconnected during the run: ${JSON.stringify(after.disconnectReasons)}`);
    return {
      deliveredPerSec: reading.count / (reading.elapsedMs / 1000),
      sentPerSec: ((after.sent - before.sent) * 1000) / elapsed,
      reading,
      cpuPct,
      foreignPct,
      stealPct,
      fleet: after,
    };
  } finally {
    if (loadgen !== null) await drain(loadgen, subscriber);
    debug('stopping fleet');
    await loadgen?.stop();
    debug('stopping subscriber');
    await subscriber.stop();
    debug('stopped');
  }
}

/**
 * Stops publishing and waits until the subscriber has what was sent (or
 * nothing more arrives for half a second, at most 5 s) before anything is
 * closed. Closing the subscriber while the broker still queues messages for
 * it crashes aedes 1.2.0 (mqemitter recursion; see repro-aedes-stack-overflow.ts).
 */
async function drain(loadgen: Loadgen, subscriber: Subscriber): Promise<void> {
  try {
    const paused = await loadgen.pause();
    let last = -1;
    let lastChange = Date.now();
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      const { total } = await subscriber.read();
      if (total >= paused.sent) return;
      if (total !== last) {
        last = total;
        lastChange = Date.now();
      } else if (Date.now() - lastChange > 500) {
        return;
      }
      await sleep(50);
    }
  } catch {
    // best effort: the processes are stopped next either way
  }
}
