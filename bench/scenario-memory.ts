/**
 * c. Idle memory per device: RSS of each process (VmRSS) after a GC settle,
 *    before and after connecting N idle devices, fresh processes for every
 *    repetition. Chain (agent and hub, the hub including its embedded aedes)
 *    against aedes alone and Mosquitto alone.
 */
import { guarded, type Harness, Loadgen } from './harness.js';
import type { Plan } from './plan.js';
import { type ManagedProcess, rssKiB, sleep } from './procs.js';
import { type Started, startAvailable, type Variant } from './scenario-throughput.js';
import { HOST, type System, startAedes, startChain, startChainToMosquitto, startMosquittoBroker } from './systems.js';

export const MEMORY = 'c idle memory';
/** Full GC in every node process of the system (SIGUSR2, see preload.ts), then a pause. */
export async function settle(system: System, ms = 1500): Promise<void> {
  for (const proc of Object.values(system.procs) as ManagedProcess[]) proc.requestGc();
  await sleep(ms);
}

export function readRss(system: System): Record<string, number> {
  return Object.fromEntries(Object.entries(system.pids).map(([role, pid]) => [role, rssKiB(pid)]));
}

export async function memoryScenario(h: Harness, plan: Plan): Promise<void> {
  const n = plan.memory.devices;
  const name = `${n} idle dev`;
  const variants: Variant[] = [
    { name: 'aedes direct', start: () => startAedes(h) },
    { name: 'chain', start: () => startChain(h) },
  ];
  if (plan.mode === 'full') {
    variants.push({ name: 'mosquitto direct', start: () => startMosquittoBroker(h) });
    variants.push({ name: 'chain to mosquitto', start: () => startChainToMosquitto(h) });
  }
  for (let rep = 0; rep < plan.reps; rep++) {
    if (!h.budget.allows(4 * plan.memory.settleMs + 8000)) {
      h.results.note(MEMORY, `stopped after ${rep} repetition(s): time budget`);
      return;
    }
    // Fresh processes every repetition, so "before" is a process that never held
    // devices. The variants run side by side: RSS does not depend on sharing the CPU.
    await guarded(h, MEMORY, `rep ${rep + 1}`, async () => {
      const systems: Started[] = [];
      const fleets: Loadgen[] = [];
      try {
        await startAvailable(h, MEMORY, variants, systems, rep === 0);
        await sleep(300);
        await Promise.all(systems.map(({ system }) => settle(system, plan.memory.settleMs)));
        const before = systems.map(({ system }) => readRss(system));
        fleets.push(
          ...(await Promise.all(
            systems.map(({ system }) =>
              Loadgen.start(h, 'loadgen', {
                host: HOST,
                port: system.devicePort,
                devices: n,
                clientIdPrefix: h.prefix('mem'),
                ratePerDevice: 0,
                keepaliveSeconds: 60,
                sourceAddresses: h.addresses.take(n),
                connectConcurrency: 500,
                connectTimeoutMs: 30_000,
              }),
            ),
          )),
        );
        for (const f of fleets) {
          if (f.ramp.connected < n) throw new Error(`only ${f.ramp.connected} of ${n} devices connected: ${JSON.stringify(f.ramp.failureReasons)}`);
        }
        await sleep(300);
        await Promise.all(systems.map(({ system }) => settle(system, plan.memory.settleMs)));
        for (const [i, { name: variant, system }] of systems.entries()) {
          const after = readRss(system);
          const perDevice: Record<string, number> = {};
          for (const role of Object.keys(before[i])) {
            perDevice[role] = (after[role] - before[i][role]) / n;
            h.results.add(MEMORY, name, variant, `${role} RSS per device`, 'KiB', 'lower', perDevice[role]);
          }
          h.results.detail(MEMORY, { variant, rep, devices: n, beforeKiB: before[i], afterKiB: after, perDeviceKiB: perDevice });
          h.progress(`${MEMORY} ${name} ${variant} rep ${rep + 1}: ${Object.entries(perDevice).map(([r, v]) => `${r} ${v.toFixed(2)} KiB/device (${before[i][r]}→${after[r]} KiB)`).join(', ')}`);
        }
      } finally {
        await Promise.all(fleets.map((f) => f.stop()));
        await Promise.all(systems.map(({ system }) => system.close()));
      }
    });
  }
}
