/**
 * Where the chain spends its time: one saturation run per QoS with agent
 * and hub under `node --cpu-prof`, summarised as top functions and files by
 * self time. Profiles are kept in bench/results/profiles/.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { renderProfile, summarizeProfile } from './cpu-profile.js';
import { guarded, type Harness } from './harness.js';
import type { Plan } from './plan.js';
import { saturationParams } from './scenario-throughput.js';
import { startChain } from './systems.js';
import { steadyTrafficRun } from './traffic.js';

export const PROFILE = 'profile';
const PROFILE_ROOT = fileURLToPath(new URL('../../bench/results/profiles/', import.meta.url));

export async function profileScenario(h: Harness, plan: Plan): Promise<void> {
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  for (const c of plan.throughput.cases.filter((x) => x.devices === 100 && x.inFlight === undefined)) {
    await guarded(h, PROFILE, `qos${c.qos}`, async () => {
      const dir = join(PROFILE_ROOT, `${plan.mode}-${stamp}`);
      mkdirSync(dir, { recursive: true });
      const flags = (role: string): string[] => ['--cpu-prof', `--cpu-prof-dir=${dir}`, `--cpu-prof-name=${role}-qos${c.qos}.cpuprofile`];
      const system = await startChain({ ...h, hubNodeFlags: flags('hub'), agentNodeFlags: flags('agent') });
      try {
        const r = await steadyTrafficRun(h, system, `prof${c.qos}`, saturationParams(plan, c));
        h.progress(`${PROFILE} qos${c.qos} ${c.devices} dev: ${Math.round(r.deliveredPerSec)} msg/s under the profiler (cpu ${JSON.stringify(r.cpuPct)})`);
      } finally {
        // SIGTERM: both programs shut down cleanly, which is when node writes the profile.
        await system.close();
      }
      for (const role of ['agent', 'hub']) {
        const file = join(dir, `${role}-qos${c.qos}.cpuprofile`);
        const summary = summarizeProfile(file, 20);
        h.results.detail(PROFILE, { role, qos: c.qos, devices: c.devices, ...summary });
        h.progress(renderProfile(summary, `${role} qos${c.qos} ${c.devices} dev`));
      }
    });
  }
}
