/**
 * --huge: 100 000 concurrent idle devices from several generator processes
 * (each under the 20 000-descriptor limit), spread over source addresses
 * 127.0.0.2 and up.
 *   1. all of them through ONE agent process: it holds one socket per
 *      device, so it cannot pass ~19 990 devices; this records what happens
 *      and how far it gets;
 *   2. ONE agent with `--workers 6` (node:cluster, each worker under the
 *      limit), skipped with a note if the agent does not take the flag;
 *   3. six agents (one process each) into ONE hub: what the hub does with
 *      100 000 sessions.
 * Devices, agent and hub RSS, connects per second.
 */
import { ensureDevPki } from '../shared/pki.js';
import { type Harness, Loadgen, MAX_DEVICES_PER_GENERATOR } from './harness.js';
import type { ConnectRamp } from './loadgen.js';
import type { Plan } from './plan.js';
import { childPids, type RpcProcess, sleep, treeFdCount, treeRssKiB } from './procs.js';
import { settle, readRss } from './scenario-memory.js';
import { HOST, NotAvailableError, type System, startChain } from './systems.js';

export const HUGE = 'huge 100k';
const DEVICES = 100_000;
const GENERATORS = Math.ceil(DEVICES / 17_000);
const MAX_RUN_MS = 300_000;
const STALL_MS = 30_000;

interface Generator {
  proc: RpcProcess;
  ramp: Promise<ConnectRamp>;
  done: ConnectRamp | null;
  error: string | null;
}

async function connectAll(h: Harness, system: System, label: string): Promise<{ connected: number; elapsedMs: number; generators: Generator[] }> {
  const perGenerator = Math.ceil(DEVICES / GENERATORS);
  if (perGenerator > MAX_DEVICES_PER_GENERATOR) throw new Error('too many devices per generator');
  const generators: Generator[] = [];
  const t0 = performance.now();
  for (let g = 0; g < GENERATORS; g++) {
    const port = system.devicePorts[g % system.devicePorts.length];
    const launched = await Loadgen.launch(h, `loadgen-${g + 1}`, {
      host: HOST,
      port,
      devices: Math.min(perGenerator, DEVICES - g * perGenerator),
      startIndex: g * perGenerator,
      clientIdPrefix: h.prefix(`huge${g}`),
      ratePerDevice: 0,
      // Idle devices at a common keepalive: 100 000 pings every 45 s are part of the load.
      keepaliveSeconds: 60,
      sourceAddresses: h.addresses.take(perGenerator),
      connectConcurrency: 500,
      connectTimeoutMs: 30_000,
    });
    const gen: Generator = { proc: launched.proc, ramp: launched.ramp, done: null, error: null };
    launched.ramp.then(
      (r) => {
        gen.done = r;
      },
      (err: unknown) => {
        gen.error = err instanceof Error ? err.message.split('\n')[0] : String(err);
      },
    );
    generators.push(gen);
  }
  let best = 0;
  let bestAt = performance.now();
  let connected = 0;
  while (performance.now() - t0 < MAX_RUN_MS) {
    await sleep(2000);
    const stats = await Promise.all(generators.map((g) => g.proc.call<{ connected: number; connectFailures: number; disconnects: number }>('stats').catch(() => null)));
    connected = stats.reduce((sum, s) => sum + (s?.connected ?? 0), 0);
    const failed = stats.reduce((sum, s) => sum + (s?.connectFailures ?? 0), 0);
    const lost = stats.reduce((sum, s) => sum + (s?.disconnects ?? 0), 0);
    const procs = Object.entries(system.procs).map(([role, p]) => `${role} ${p.alive ? `${Math.round(treeRssKiB(p.pid) / 1024)} MiB, ${treeFdCount(p.pid)} fds` : `EXITED (code ${p.exitInfo?.code}, signal ${p.exitInfo?.signal})`}`);
    h.progress(`${HUGE} ${label}: ${connected} connected, ${failed} connect failures, ${lost} lost after connecting; ${procs.join('; ')}`);
    if (connected > best) {
      best = connected;
      bestAt = performance.now();
    }
    if (generators.every((g) => g.done !== null || g.error !== null)) break;
    if (performance.now() - bestAt > STALL_MS) {
      h.progress(`${HUGE} ${label}: no progress for ${STALL_MS / 1000} s, stopping the ramp`);
      break;
    }
  }
  return { connected: best, elapsedMs: bestAt - t0, generators };
}

async function stopGenerators(generators: Generator[]): Promise<void> {
  await Promise.all(
    generators.map(async (g) => {
      await g.proc.call('stop', {}, 60_000).catch(() => undefined);
      await g.proc.stop();
    }),
  );
}

function agentFate(system: System): string {
  const agent = system.procs.agent;
  if (agent.alive) return `alive: ${1 + childPids(agent.pid).length} process(es), ${treeFdCount(agent.pid)} descriptors open`;
  return `exited (code ${agent.exitInfo?.code}, signal ${agent.exitInfo?.signal}): ${agent.logTail().split('\n').filter((l) => l.trim() !== '').slice(-8).join(' | ')}`;
}

/** One agent (one process, or one primary with --workers) in front of one hub. */
async function oneAgent(h: Harness, label: string, workers: number | undefined): Promise<void> {
  let system: System;
  try {
    system = await startChain(h, { agentWorkers: workers });
  } catch (err) {
    if (!(err instanceof NotAvailableError)) throw err;
    h.results.skip(HUGE, `${label}: not available: ${err.message}`);
    return;
  }
  let generators: Generator[] = [];
  try {
    await settle(system);
    const before = { agent: treeRssKiB(system.pids.agent), hub: treeRssKiB(system.pids.hub) };
    const run = await connectAll(h, system, label);
    generators = run.generators;
    const reasons: Record<string, number> = {};
    for (const g of generators) for (const [k, v] of Object.entries(g.done?.failureReasons ?? {})) reasons[k] = (reasons[k] ?? 0) + v;
    const fate = agentFate(system);
    const after = { agent: treeRssKiB(system.pids.agent), hub: treeRssKiB(system.pids.hub) };
    h.results.add(HUGE, label, 'chain', 'devices connected at once', 'devices', 'higher', run.connected);
    h.results.add(HUGE, label, 'chain', 'connects/s', '1/s', 'higher', (run.connected * 1000) / Math.max(1, run.elapsedMs));
    h.results.add(HUGE, label, 'chain', 'agent RSS (all processes)', 'MiB', 'none', after.agent / 1024);
    h.results.add(HUGE, label, 'chain', 'hub RSS', 'MiB', 'none', after.hub / 1024);
    if (run.connected > 0) {
      h.results.add(HUGE, label, 'chain', 'agent RSS per device', 'KiB', 'lower', (after.agent - before.agent) / run.connected);
      h.results.add(HUGE, label, 'chain', 'hub RSS per device', 'KiB', 'lower', (after.hub - before.hub) / run.connected);
    }
    h.results.note(HUGE, `${label}: at most ${run.connected} of ${DEVICES} devices connected at once; agent ${fate}; connect failures by reason: ${JSON.stringify(reasons)}`);
    h.results.detail(HUGE, { part: label, before, after, connected: run.connected, elapsedMs: run.elapsedMs, agentFate: fate, reasons, ramps: generators.map((g) => g.done ?? g.error) });
  } finally {
    await stopGenerators(generators);
    await system.close();
  }
}

export async function hugeScenario(h: Harness, _plan: Plan): Promise<void> {
  await ensureDevPki(h.pkiDir, { agentIds: Array.from({ length: GENERATORS }, (_, i) => `agent-${i + 1}`) });
  // 1. One agent process.
  await oneAgent(h, 'one agent, one process', undefined);
  // 2. One agent with a worker per ~17 000 devices (edge-agent --workers).
  await oneAgent(h, `one agent, --workers ${GENERATORS}`, GENERATORS);
  // 3. Several agents, one hub: what the hub does with 100 000 sessions.
  {
    const agents = GENERATORS;
    const system = await startChain(h, { agents });
    let generators: Generator[] = [];
    try {
      await settle(system);
      const before = readRss(system);
      const run = await connectAll(h, system, `${agents} agents, one hub`);
      generators = run.generators;
      await sleep(2000);
      await settle(system);
      const after = readRss(system);
      const agentDelta = Object.keys(before).filter((r) => r.startsWith('agent')).reduce((sum, r) => sum + (after[r] - before[r]), 0);
      const name = `${agents} agents, one hub`;
      h.results.add(HUGE, name, 'chain', 'devices connected at once', 'devices', 'higher', run.connected);
      h.results.add(HUGE, name, 'chain', 'connects/s', '1/s', 'higher', (run.connected * 1000) / Math.max(1, run.elapsedMs));
      h.results.add(HUGE, name, 'chain', 'hub RSS', 'MiB', 'none', after.hub / 1024);
      h.results.add(HUGE, name, 'chain', 'hub RSS per device', 'KiB', 'lower', (after.hub - before.hub) / Math.max(1, run.connected));
      h.results.add(HUGE, name, 'chain', 'agents RSS per device', 'KiB', 'lower', agentDelta / Math.max(1, run.connected));
      h.results.detail(HUGE, { part: name, before, after, connected: run.connected, elapsedMs: run.elapsedMs, ramps: generators.map((g) => g.done ?? g.error) });
    } finally {
      await stopGenerators(generators);
      await system.close();
    }
  }
}
