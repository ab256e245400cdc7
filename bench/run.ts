#!/usr/bin/env node
/**
 * npm run bench [-- --quick] [--huge] [--only a,b,...] [--reps N] [--verbose]
 *
 * Runs each scenario side by side with its baseline, alternating, and prints
 * a table (medians and spread) to stderr, writes the full results to
 * bench/results/, and with --quick ends with one JSON line on stdout.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ensureDevPki } from '../shared/pki.js';
import { AddressPool, Budget, type Harness } from './harness.js';
import { FULL, type Plan, QUICK } from './plan.js';
import { ProcessRegistry } from './procs.js';
import { Results } from './results-table.js';
import { report } from './report.js';
import { ceilingScenario } from './scenario-ceiling.js';
import { connectStormScenario } from './scenario-connect-storm.js';
import { hugeScenario } from './scenario-huge.js';
import { latencyScenario } from './scenario-latency.js';
import { memoryScenario } from './scenario-memory.js';
import { profileScenario } from './scenario-profile.js';
import { throughputScenario } from './scenario-throughput.js';
import { wanScenario } from './scenario-wan.js';

const HELP = `npm run bench -- [options]

  --quick        the short run (under 3 minutes); ends with one JSON line on stdout
  --huge         also run 100 000 devices (several generator processes, source addresses 127.0.0.x)
  --only LIST    scenarios to run, comma separated: a,b,c,d,e,f,profile (default: all; huge only with --huge)
  --reps N       repetitions per measurement (default 3)
  --hub-flags F  node flags for every hub process, space separated
                 (e.g. --hub-flags=--max-semi-space-size=64 to measure a tuned heap)
  --verbose      echo the output of every child process
  -h, --help`;

const SCENARIOS: Record<string, (h: Harness, plan: Plan) => Promise<void>> = {
  a: throughputScenario,
  b: latencyScenario,
  c: memoryScenario,
  d: connectStormScenario,
  e: wanScenario,
  f: ceilingScenario,
  profile: profileScenario,
};

const RESULTS_DIR = fileURLToPath(new URL('../../bench/results/', import.meta.url));
/** Agents with a certificate in the dev PKI; --huge adds more (RSA keys take a moment each). */
const AGENT_IDS = ['agent-1'];

const DIST = fileURLToPath(new URL('../', import.meta.url));

/**
 * Which build of the product was measured: a hash over the compiled code of
 * agent, hub, shared and firmware-sim, and when it was last built. Other
 * people may rebuild dist/ while a run goes on; the run says so if they did.
 */
function codeFingerprint(): { hash: string; builtAt: string } {
  const hash = createHash('sha256');
  let newest = 0;
  for (const dir of ['shared', 'edge-agent', 'cloud-hub', 'firmware-sim']) {
    let files: string[] = [];
    try {
      files = readdirSync(join(DIST, dir)).filter((f) => f.endsWith('.js')).sort();
    } catch {
      continue;
    }
    for (const file of files) {
      const path = join(DIST, dir, file);
      hash.update(`${dir}/${file}\0`).update(readFileSync(path));
      newest = Math.max(newest, statSync(path).mtimeMs);
    }
  }
  return { hash: hash.digest('hex').slice(0, 16), builtAt: new Date(newest).toISOString() };
}

/** A bad command line: reported without a stack trace, exit code 2. */
class UsageError extends Error {}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      huge: { type: 'boolean', default: false },
      only: { type: 'string' },
      reps: { type: 'string' },
      'hub-flags': { type: 'string' },
      verbose: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stderr.write(`${HELP}\n`);
    return 0;
  }
  const plan: Plan = structuredClone(values.quick ? QUICK : FULL);
  if (values.reps !== undefined) {
    const reps = Number(values.reps);
    if (!Number.isInteger(reps) || reps < 1 || reps > 20) throw new UsageError(`--reps: expected 1..20 (got ${values.reps})`);
    plan.reps = reps;
  }
  const only = values.only?.split(',').map((s) => s.trim()) ?? null;
  for (const name of only ?? []) {
    if (!(name in SCENARIOS) && name !== 'huge') throw new UsageError(`--only: unknown scenario ${name} (expected ${Object.keys(SCENARIOS).join(', ')}, huge)`);
  }
  const selected = Object.keys(SCENARIOS).filter((name) => (only === null ? !(name === 'f' && plan.ceiling === null) && !(name === 'profile' && !plan.profile) : only.includes(name)));
  const runHuge = values.huge || (only?.includes('huge') ?? false);

  const registry = new ProcessRegistry();
  registry.verbose = values.verbose || registry.verbose;
  const workDir = mkdtempSync(join(tmpdir(), 'edgemux-bench-'));
  let interrupted = false;
  const cleanupNow = (): void => {
    registry.killAllNow();
    rmSync(workDir, { recursive: true, force: true });
  };
  process.on('exit', cleanupNow);
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) process.exit(130);
    interrupted = true;
    process.stderr.write(`\n${signal}: stopping every bench process...\n`);
    void registry.stopAll().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const startedAt = Date.now();
  const progress = (message: string): void => {
    process.stderr.write(`[${((Date.now() - startedAt) / 1000).toFixed(1).padStart(6)}s] ${message}\n`);
  };
  progress(`edgemux bench, ${plan.mode} run: scenarios ${selected.join(', ')}${runHuge ? ', huge' : ''}; ${plan.reps} repetitions`);
  const codeAtStart = codeFingerprint();
  progress(`code measured: build ${codeAtStart.hash} of ${codeAtStart.builtAt}`);
  progress(`machine: ${cpus().length} cores (${cpus()[0]?.model ?? '?'}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, node ${process.version}; load generators and subscriber share these cores with the systems under test`);

  const pkiDir = join(workDir, 'pki');
  const pki = await ensureDevPki(pkiDir, { agentIds: AGENT_IDS });
  let runCounter = 0;
  const results = new Results();
  const h: Harness = {
    registry,
    pkiDir,
    pki,
    workDir,
    hubNodeFlags: values['hub-flags']?.split(' ').filter((flag) => flag !== '') ?? [],
    agentNodeFlags: [],
    progress,
    addresses: new AddressPool(),
    results,
    budget: new Budget(plan.budgetMs),
    quietWaitMs: plan.quietWaitMs,
    retries: plan.retries,
    runId: process.pid,
    prefix: (tag) => `b${(runCounter++).toString(36)}-${tag}-`,
  };

  for (const [index, name] of selected.entries()) {
    if (interrupted) break;
    h.budget.reserve(selected.slice(index + 1).reduce((sum, later) => sum + (plan.scenarioMs[later] ?? 0), 0));
    progress(`== scenario ${name}`);
    try {
      await SCENARIOS[name](h, plan);
    } catch (err) {
      const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
      results.note(name, `scenario failed: ${message.split('\n').slice(0, 4).join(' | ')}`);
      progress(`!! scenario ${name} failed: ${message}`);
    }
    if (registry.count > 0) {
      progress(`(stopping ${registry.count} leftover process(es) after scenario ${name})`);
      await registry.stopAll();
    }
  }
  if (runHuge && !interrupted) {
    progress('== scenario huge');
    try {
      await hugeScenario(h, plan);
    } catch (err) {
      results.note('huge', `scenario failed: ${err instanceof Error ? err.message : String(err)}`);
    }
    await registry.stopAll();
  }
  await registry.stopAll();
  const codeAtEnd = codeFingerprint();
  if (codeAtEnd.hash !== codeAtStart.hash) {
    results.note('run', `dist/ was rebuilt during the run (build ${codeAtStart.hash} → ${codeAtEnd.hash} of ${codeAtEnd.builtAt}): processes started after that ran the newer code`);
  }

  const { table, quickLine, json } = report(results, plan, {
    elapsedMs: Date.now() - startedAt,
    scenarios: selected,
    huge: runHuge,
    code: { start: codeAtStart, end: codeAtEnd },
    hubNodeFlags: h.hubNodeFlags,
    machine: { cores: cpus().length, model: cpus()[0]?.model, memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10, node: process.version },
  });
  process.stderr.write(`\n${table}\n`);
  mkdirSync(RESULTS_DIR, { recursive: true });
  const file = join(RESULTS_DIR, `bench-${plan.mode}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify(json, null, 2)}\n`);
  progress(`results written to ${file}`);
  if (plan.mode === 'quick') process.stdout.write(`${JSON.stringify(quickLine)}\n`);
  return interrupted ? 130 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const usage = err instanceof UsageError || (err instanceof TypeError && 'code' in err && String(err.code).startsWith('ERR_PARSE_ARGS'));
    process.stderr.write(usage ? `${(err as Error).message}\n${HELP}\n` : `${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = usage ? 2 : 1;
  },
);
