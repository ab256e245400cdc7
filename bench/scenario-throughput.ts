/**
 * a. Throughput at saturation, 64-byte payloads, one cloud subscriber:
 *    chain (agent → tunnel → hub → embedded aedes) against aedes direct over TCP;
 *    chain to an external Mosquitto against an edge Mosquitto bridging over TLS to a cloud Mosquitto.
 */
import { guarded, type Harness, QUIET_PCT } from './harness.js';
import type { Plan, TrafficCase } from './plan.js';
import { NotAvailableError, type System, startAedes, startBridge, startChain, startChainToMosquitto } from './systems.js';
import { type TrafficParams, type TrafficResult, steadyTrafficRun } from './traffic.js';

export const THROUGHPUT = 'a throughput';

/** Other work on the machine (or the hypervisor taking CPU) during a measurement makes it suspect: say so. */
export function noteInterference(h: Harness, scenario: string, what: string, r: TrafficResult & { attempts?: number }): void {
  if (r.foreignPct < QUIET_PCT && r.stealPct < QUIET_PCT) return;
  h.results.note(scenario, `${what}: other load on the machine ${r.foreignPct}% of a core, steal ${r.stealPct}% (after ${r.attempts ?? 1} attempt(s)): treat with care`);
}

export interface Variant {
  name: string;
  start: () => Promise<System>;
}

export interface Started {
  name: string;
  system: System;
}

/**
 * Starts each variant into `started` (as it goes, so the caller's cleanup
 * stops whatever started before a failure). A variant that is not available is
 * skipped, with a note when `noteSkip` is set.
 */
export async function startAvailable(h: Harness, scenario: string, variants: Variant[], started: Started[], noteSkip = true): Promise<void> {
  for (const v of variants) {
    try {
      started.push({ name: v.name, system: await v.start() });
    } catch (err) {
      if (!(err instanceof NotAvailableError)) throw err;
      if (!noteSkip) continue;
      h.results.skip(scenario, `${v.name}: not available: ${err.message}`);
      h.progress(`-- ${scenario}: ${v.name} not available: ${err.message}`);
    }
  }
}

export function caseName(c: TrafficCase): string {
  return `qos${c.qos} ${c.devices} dev${c.inFlight !== undefined ? ` ${c.inFlight} in flight` : ''}`;
}

/**
 * Starts every variant, then runs `fn` for each repetition, alternating the
 * order of variants between repetitions so drift on the machine hits both.
 * A variant that is not available is skipped with a note.
 */
export async function alternate(
  h: Harness,
  scenario: string,
  variants: Variant[],
  reps: number,
  fn: (variant: string, system: System, rep: number) => Promise<void>,
  estimateRunMs: number,
): Promise<void> {
  const started: Started[] = [];
  try {
    await startAvailable(h, scenario, variants, started);
    for (let rep = 0; rep < reps; rep++) {
      const order = rep % 2 === 0 ? started : [...started].reverse();
      for (const { name, system } of order) {
        if (!h.budget.allows(estimateRunMs)) {
          h.results.note(scenario, `stopped after ${rep} repetition(s): time budget`);
          return;
        }
        await guarded(h, scenario, `${name} rep ${rep + 1}`, () => fn(name, system, rep));
        const dead = Object.values(system.procs).filter((p) => !p.alive);
        if (dead.length > 0) {
          for (const p of dead) {
            const tail = p.logTail().split('\n').filter((l) => l.trim() !== '').slice(-12).join(' | ');
            h.results.note(scenario, `${name}: process ${p.name} died during rep ${rep + 1} (code ${p.exitInfo?.code}, signal ${p.exitInfo?.signal}): ${tail}`);
            h.progress(`!! ${scenario} ${name}: ${p.name} died: ${tail}`);
          }
          // Start the variant again for the remaining repetitions.
          const index = started.findIndex((s) => s.system === system);
          await system.close();
          const v = variants.find((x) => x.name === name)!;
          started[index] = { name, system: await v.start() };
        }
      }
    }
  } finally {
    await Promise.all(started.map(({ system }) => system.close()));
  }
}

/**
 * Saturation: devices are offered far more than any system here can carry
 * (200k msg/s); what holds them back is the fleet's backpressure: the
 * per-device QoS 1 in-flight cap (100) and an end-to-end window of messages
 * sent but not yet delivered to the subscriber (plan.ts `inFlight`).
 */
export function saturationParams(plan: Plan, c: TrafficCase): TrafficParams {
  const t = plan.throughput;
  return {
    devices: c.devices,
    qos: c.qos,
    ratePerDevice: Math.ceil(t.offeredPerSec / c.devices),
    warmupMs: t.warmupMs,
    windowMs: t.windowMs,
    tickMs: 2,
    maxInflight: 100,
    windowMessages: c.inFlight ?? t.inFlight,
  };
}

async function measure(h: Harness, plan: Plan, variants: Variant[], cases: TrafficCase[]): Promise<void> {
  const t = plan.throughput;
  for (const c of cases) {
    const name = caseName(c);
    await alternate(
      h,
      THROUGHPUT,
      variants,
      plan.reps,
      async (variant, system, rep) => {
        const r = await steadyTrafficRun(h, system, `tp${c.qos}`, saturationParams(plan, c));
        h.results.add(THROUGHPUT, name, variant, 'delivered', 'msg/s', 'higher', r.deliveredPerSec);
        for (const [role, pct] of Object.entries(r.cpuPct)) h.results.add(THROUGHPUT, name, variant, `cpu ${role}`, '% core', 'none', pct);
        h.results.detail(THROUGHPUT, { case: name, variant, rep, ...r });
        noteInterference(h, THROUGHPUT, `${name} ${variant} rep ${rep + 1}`, r);
        h.progress(`${THROUGHPUT} ${name} ${variant} rep ${rep + 1}: ${Math.round(r.deliveredPerSec)} msg/s delivered (sent ${Math.round(r.sentPerSec)}/s; cpu ${JSON.stringify(r.cpuPct)}; other load ${r.foreignPct}%, steal ${r.stealPct}%)`);
      },
      t.warmupMs + t.windowMs + 1500,
    );
  }
}

export async function throughputScenario(h: Harness, plan: Plan): Promise<void> {
  await measure(
    h,
    plan,
    [
      { name: 'aedes direct', start: () => startAedes(h) },
      { name: 'chain', start: () => startChain(h) },
    ],
    plan.throughput.cases,
  );
  await measure(
    h,
    plan,
    [
      { name: 'mosquitto bridge', start: () => startBridge(h) },
      { name: 'chain to mosquitto', start: () => startChainToMosquitto(h) },
    ],
    plan.throughput.bridgeCases,
  );
}
