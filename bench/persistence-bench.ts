/**
 * Offline-queue throughput: QoS 1 PUBLISHes through an in-process aedes broker
 * whose persistent (clean: false) subscribers are all offline, so every message
 * is queued once per subscriber. Compares SqlitePersistence (file, WAL) with
 * aedes' default in-memory persistence, alternating the two so drift in machine
 * load hits both, and reports medians.
 *
 *   node dist/bench/persistence-bench.js [--messages 20000] [--subscribers 10]
 *     [--reps 3] [--inflight 256] [--payload 64] [--synchronous NORMAL|FULL]
 *
 * `--inflight` PUBLISHes are outstanding at once, as when many devices publish
 * concurrently; for SQLite that is what lets one transaction carry many of them.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Aedes } from 'aedes';
import { SqlitePersistence } from '../cloud-hub/sqlite-persistence.js';

type Implementation = 'memory' | 'sqlite';

interface BenchConfig {
  messages: number;
  subscribers: number;
  reps: number;
  inflight: number;
  payloadBytes: number;
  synchronous: 'NORMAL' | 'FULL';
}

interface RunResult {
  implementation: Implementation;
  rep: number;
  seconds: number;
  messagesPerSecond: number;
  /** messages × subscribers: rows or queue entries written per second. */
  queuedPerSecond: number;
}

/** The promise-returning surface both persistences offer when called without a callback. */
interface QueueInspection {
  addSubscriptions(client: { id: string }, subs: Array<{ topic: string; qos: number }>): Promise<unknown>;
  outgoingStream(client: { id: string }): Readable;
}

// Loaded the way aedes loads its default: the package's .d.ts declares an ES
// default export that a CommonJS module.exports function does not have under NodeNext.
const memoryPersistence = createRequire(import.meta.url)('aedes-persistence') as () => object;

const TOPIC = 'bench/telemetry';

function readConfig(): BenchConfig {
  const { values } = parseArgs({
    options: {
      messages: { type: 'string', default: '20000' },
      subscribers: { type: 'string', default: '10' },
      reps: { type: 'string', default: '3' },
      inflight: { type: 'string', default: '256' },
      payload: { type: 'string', default: '64' },
      synchronous: { type: 'string', default: 'NORMAL' },
    },
  });
  const positive = (name: string, raw: string): number => {
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got ${JSON.stringify(raw)}`);
    return n;
  };
  const synchronous = values.synchronous.toUpperCase();
  if (synchronous !== 'NORMAL' && synchronous !== 'FULL') {
    throw new Error(`--synchronous must be NORMAL or FULL, got ${JSON.stringify(values.synchronous)}`);
  }
  return {
    messages: positive('messages', values.messages),
    subscribers: positive('subscribers', values.subscribers),
    reps: positive('reps', values.reps),
    inflight: positive('inflight', values.inflight),
    payloadBytes: positive('payload', values.payload),
    synchronous,
  };
}

async function runOnce(implementation: Implementation, config: BenchConfig, messages: number): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'edgemux-bench-'));
  const sqlite =
    implementation === 'sqlite'
      ? new SqlitePersistence({ path: path.join(dir, 'state.db'), synchronous: config.synchronous })
      : undefined;
  const persistence = sqlite ?? memoryPersistence();
  const inspect = persistence as unknown as QueueInspection;
  const broker = await Aedes.createBroker({ persistence });
  try {
    // What aedes stores when a clean: false client subscribes and then goes away.
    for (let s = 0; s < config.subscribers; s++) {
      await inspect.addSubscriptions({ id: `sub-${s}` }, [{ topic: 'bench/#', qos: 1 }]);
    }

    const payload = Buffer.alloc(config.payloadBytes, 0x61);
    const started = process.hrtime.bigint();
    await new Promise<void>((resolve, reject) => {
      let sent = 0;
      let done = 0;
      const onPublished = (err?: Error): void => {
        if (err) return reject(err);
        done++;
        if (done === messages) resolve();
        else if (sent < messages) publishNext();
      };
      const publishNext = (): void => {
        sent++;
        broker.publish({ cmd: 'publish', topic: TOPIC, payload, qos: 1, retain: false, dup: false }, onPublished);
      };
      for (let i = 0; i < Math.min(config.inflight, messages); i++) publishNext();
    });
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;

    let queued = 0;
    for await (const _packet of inspect.outgoingStream({ id: `sub-${config.subscribers - 1}` })) queued++;
    if (queued !== messages) throw new Error(`${implementation}: expected ${messages} queued messages, found ${queued}`);
    return seconds;
  } finally {
    await new Promise<void>((resolve) => broker.close(() => resolve()));
    sqlite?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error('package.json not found above the benchmark script');
    dir = parent;
  }
  return dir;
}

async function main(): Promise<void> {
  const config = readConfig();
  console.log(
    `persistence bench: ${config.messages} QoS 1 messages × ${config.subscribers} offline subscribers, ` +
      `${config.payloadBytes} B payload, ${config.inflight} in flight, ${config.reps} reps, sqlite synchronous=${config.synchronous}`,
  );

  // Warm both code paths (JIT, SQLite page cache) before anything is recorded.
  const warmup = Math.min(2000, config.messages);
  await runOnce('memory', config, warmup);
  await runOnce('sqlite', config, warmup);

  const runs: RunResult[] = [];
  for (let rep = 0; rep < config.reps; rep++) {
    // ABBA order, so neither implementation always runs on the warmer machine.
    const order: Implementation[] = rep % 2 === 0 ? ['memory', 'sqlite'] : ['sqlite', 'memory'];
    for (const implementation of order) {
      const seconds = await runOnce(implementation, config, config.messages);
      const messagesPerSecond = config.messages / seconds;
      runs.push({ implementation, rep, seconds, messagesPerSecond, queuedPerSecond: messagesPerSecond * config.subscribers });
      console.log(`  rep ${rep + 1} ${implementation.padEnd(6)} ${seconds.toFixed(3)} s  ${Math.round(messagesPerSecond)} msg/s`);
    }
  }

  const summary = (['memory', 'sqlite'] as const).map((implementation) => {
    const mine = runs.filter((run) => run.implementation === implementation);
    return {
      implementation,
      medianSeconds: median(mine.map((run) => run.seconds)),
      medianMessagesPerSecond: median(mine.map((run) => run.messagesPerSecond)),
      medianQueuedPerSecond: median(mine.map((run) => run.queuedPerSecond)),
    };
  });

  console.log('');
  console.log('implementation   median s   median msg/s   median queued/s');
  for (const row of summary) {
    console.log(
      `${row.implementation.padEnd(16)} ${row.medianSeconds.toFixed(3).padStart(8)}   ${Math.round(row.medianMessagesPerSecond)
        .toString()
        .padStart(12)}   ${Math.round(row.medianQueuedPerSecond).toString().padStart(15)}`,
    );
  }
  const [memory, sqlite] = summary;
  console.log(`sqlite / memory throughput: ${(sqlite.medianMessagesPerSecond / memory.medianMessagesPerSecond).toFixed(2)}`);

  const outDir = path.join(repoRoot(), 'bench', 'results');
  fs.mkdirSync(outDir, { recursive: true });
  const outFile = path.join(outDir, 'persistence.json');
  const report = {
    benchmark: 'persistence',
    date: new Date().toISOString(),
    node: process.version,
    platform: `${os.platform()} ${os.arch()}`,
    cpu: os.cpus()[0]?.model ?? 'unknown',
    config,
    runs,
    medians: summary,
  };
  fs.writeFileSync(outFile, JSON.stringify(report, null, 2) + '\n');
  console.log(`wrote ${path.relative(process.cwd(), outFile)}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
