/**
 * b. End-to-end latency (device publish → cloud subscriber) at a fixed rate,
 *    QoS 1, chain against aedes direct: p50, p99, p99.9.
 */
import type { Harness } from './harness.js';
import type { Plan } from './plan.js';
import { alternate, noteInterference } from './scenario-throughput.js';
import { startAedes, startChain } from './systems.js';
import { steadyTrafficRun } from './traffic.js';

export const LATENCY = 'b latency';

export async function latencyScenario(h: Harness, plan: Plan): Promise<void> {
  const l = plan.latency;
  const name = `qos1 ${l.devices} dev ${l.ratePerSec / 1000}k msg/s`;
  await alternate(
    h,
    LATENCY,
    [
      { name: 'aedes direct', start: () => startAedes(h) },
      { name: 'chain', start: () => startChain(h) },
    ],
    plan.reps,
    async (variant, system, rep) => {
      const r = await steadyTrafficRun(h, system, 'lat', {
        devices: l.devices,
        qos: 1,
        ratePerDevice: l.ratePerSec / l.devices,
        warmupMs: l.warmupMs,
        windowMs: l.windowMs,
        // 1 ms ticks: each device's messages go out on time instead of in 10 ms bursts.
        tickMs: 1,
      });
      const add = (metric: string, unit: string, value: number): void => h.results.add(LATENCY, name, variant, metric, unit, 'lower', value);
      add('p50', 'ms', r.reading.p50Ms);
      add('p99', 'ms', r.reading.p99Ms);
      add('p99.9', 'ms', r.reading.p999Ms);
      h.results.add(LATENCY, name, variant, 'delivered', 'msg/s', 'none', r.deliveredPerSec);
      h.results.add(LATENCY, name, variant, 'puback p99', 'ms', 'lower', r.fleet.publishAckP99Ms);
      for (const [role, pct] of Object.entries(r.cpuPct)) h.results.add(LATENCY, name, variant, `cpu ${role}`, '% core', 'none', pct);
      h.results.detail(LATENCY, { case: name, variant, rep, ...r });
      noteInterference(h, LATENCY, `${name} ${variant} rep ${rep + 1}`, r);
      h.progress(
        `${LATENCY} ${name} ${variant} rep ${rep + 1}: p50 ${r.reading.p50Ms} p99 ${r.reading.p99Ms} p99.9 ${r.reading.p999Ms} ms at ${Math.round(r.deliveredPerSec)} msg/s (cpu ${JSON.stringify(r.cpuPct)}; other load ${r.foreignPct}%, steal ${r.stealPct}%)`,
      );
    },
    l.warmupMs + l.windowMs + 2000,
  );
}
