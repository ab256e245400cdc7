import { execFile, fork } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { Aedes, type Client } from 'aedes';
import type { IPublishPacket } from 'mqtt-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEVICES_PER_SOURCE_ADDRESS,
  DeviceFleet,
  DistributedFleet,
  FleetConfigError,
  LatencyHistogram,
  defaultProcessCount,
  defaultSourcePool,
  encodeTelemetry,
  nowMs,
  parseSourceAddresses,
  planWorkerSlices,
  runDistributedFleet,
  type FleetProgress,
  type FleetStats,
} from '../../firmware-sim/index.js';
import { mergeReports } from '../../firmware-sim/report-merge.js';
import type { WorkerMessage, WorkerReport } from '../../firmware-sim/worker-protocol.js';

// Workers run plain node, so they are forked from the compiled tree (npm test runs tsc first).
const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const WORKER = `${REPO_ROOT}dist/firmware-sim/fleet-worker.js`;
const CLI = `${REPO_ROOT}dist/firmware-sim/cli.js`;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(check: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check() && Date.now() < deadline) await sleep(20);
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function sum(stats: (FleetStats | null)[], key: keyof FleetStats): number {
  return stats.reduce((total, s) => total + Number(s?.[key] ?? 0), 0);
}

describe('source addresses and worker slices', () => {
  it('expands ranges and lists, and refuses nonsense', () => {
    expect(parseSourceAddresses('127.0.0.2-127.0.0.5')).toEqual(['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5']);
    expect(parseSourceAddresses('127.0.0.254-127.0.1.1, 10.0.0.1,::1')).toEqual([
      '127.0.0.254',
      '127.0.0.255',
      '127.0.1.0',
      '127.0.1.1',
      '10.0.0.1',
      '::1',
    ]);
    expect(() => parseSourceAddresses('127.0.0.9-127.0.0.2')).toThrow(FleetConfigError);
    expect(() => parseSourceAddresses('127.0.0.2-127.9.0.0')).toThrow(/more than/);
    expect(() => parseSourceAddresses('127.0.0.2,127.0.0.2')).toThrow(/twice/);
    expect(() => parseSourceAddresses('localhost')).toThrow(/not an IP address/);
  });

  it('picks a default pool only past one address’s share of ports', () => {
    expect(defaultSourcePool(DEVICES_PER_SOURCE_ADDRESS)).toBeNull();
    expect(defaultSourcePool(100_000)).toEqual(['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5', '127.0.0.6']);
    expect(defaultProcessCount(100_000)).toBe(7);
    expect(defaultProcessCount(15_000)).toBe(1);
  });

  it('gives workers disjoint index ranges, split concurrency and a balanced address round robin', () => {
    const pool = ['10.0.0.1', '10.0.0.2'];
    const slices = planWorkerSlices(
      { port: 1, devices: 1001, startIndex: 5, connectConcurrency: 500, sourceAddresses: pool },
      3,
    );
    expect(slices.map((s) => [s.startIndex, s.devices, s.connectConcurrency])).toEqual([
      [5, 334, 167],
      [339, 334, 167],
      [673, 333, 166],
    ]);
    // Replay each worker's round robin: every address ends up with half the fleet.
    const perAddress = new Map<string, number>();
    for (const slice of slices) {
      for (let slot = 0; slot < slice.devices; slot++) {
        const address = slice.sourceAddresses![slot % pool.length];
        perAddress.set(address, (perAddress.get(address) ?? 0) + 1);
      }
    }
    expect([...perAddress.values()].sort()).toEqual([500, 501]);
  });

  it('gives workers disjoint source port windows, so no (address, port) pair repeats', () => {
    const pool = ['10.0.0.1', '10.0.0.2', '10.0.0.3'];
    const slices = planWorkerSlices({ port: 1, devices: 1000, sourceAddresses: pool, sourcePortStart: 20_000 }, 3);
    expect(slices.map((s) => s.sourcePortStart)).toEqual([20_000, 20_112, 20_223]);
    const pairs = new Set<string>();
    for (const slice of slices) {
      // DeviceFleet's rule: slot s binds address s mod A, port start + floor(s / A).
      for (let slot = 0; slot < slice.devices; slot++) {
        const port = slice.sourcePortStart! + Math.floor(slot / pool.length);
        pairs.add(`${slice.sourceAddresses![slot % pool.length]}:${port}`);
      }
    }
    expect(pairs.size).toBe(1000);
  });

  it('merges latency as the union of the workers’ histograms', () => {
    const fast = new LatencyHistogram();
    const slow = new LatencyHistogram();
    for (let i = 0; i < 900; i++) fast.record(1);
    for (let i = 0; i < 100; i++) slow.record(100);
    const empty = new LatencyHistogram().encode();
    const report = (publishAck: LatencyHistogram, slowestConnectMs: number): WorkerReport => ({
      stats: { devices: 10, connects: 10, sent: 5, slowestConnectMs } as FleetStats,
      ramped: true,
      publishAckHistogram: publishAck.encode(),
      commandHistogram: empty,
      connectFailureReasons: { ECONNRESET: 1 },
      disconnectReasons: {},
      rssBytes: 0,
    });
    const merged = mergeReports([report(fast, 7), report(slow, 3)], 1234);
    expect(merged.stats).toMatchObject({ devices: 20, connects: 20, sent: 10, slowestConnectMs: 7, rampMs: 1234 });
    // 90% of samples at 1 ms: p50 is 1 ms, p99 lands in the slow worker's 100 ms.
    expect(merged.stats.publishAckP50Ms).toBeCloseTo(1, 2);
    expect(merged.stats.publishAckP99Ms).toBeCloseTo(100, 0);
    expect(merged.connectFailureReasons.toJSON()).toEqual({ ECONNRESET: 2 });
  });

  it('refuses more processes than devices, naming the option', () => {
    expect(() => new DistributedFleet({ port: 1, devices: 2 }, { processes: 3 })).toThrow(
      expect.objectContaining({ key: 'processes' }),
    );
  });
});

describe('distributed fleet against aedes', () => {
  let broker: Aedes;
  let server: net.Server;
  let port: number;
  const clientIds = new Set<string>();
  let clientEvents = 0;
  const remoteAddresses = new Set<string>();
  const remotePorts: number[] = [];
  const telemetryByPrefix = new Map<string, number>();
  const replies: IPublishPacket[] = [];

  beforeAll(async () => {
    if (!existsSync(WORKER)) throw new Error(`${WORKER} is missing: run npx tsc -p tsconfig.json first`);
    broker = await Aedes.createBroker();
    broker.on('client', (client: Client) => {
      clientEvents++;
      clientIds.add(client.id);
    });
    broker.on('publish', (packet: IPublishPacket, client: Client | null) => {
      if (client === null) return;
      if (packet.topic.endsWith('/replies')) replies.push(packet);
      if (!packet.topic.endsWith('/telemetry')) return;
      const prefix = client.id.replace(/\d+$/, '');
      telemetryByPrefix.set(prefix, (telemetryByPrefix.get(prefix) ?? 0) + 1);
    });
    server = net.createServer(broker.handle);
    server.on('connection', (socket) => {
      if (socket.remoteAddress !== undefined) remoteAddresses.add(socket.remoteAddress);
      if (socket.remotePort !== undefined) remotePorts.push(socket.remotePort);
    });
    // Any 127.x source address reaches a server on 127.0.0.1 over loopback.
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as net.AddressInfo).port;
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => broker.close(() => resolve()));
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('connects 900 devices from 3 processes over 2 source addresses, and every worker exits after stop', async () => {
    const DEVICES = 900;
    // Below the ephemeral range, so only a listener could hold one of them.
    const PORT_START = 21_000;
    const progress: FleetProgress[] = [];
    const run = await runDistributedFleet(
      {
        port,
        devices: DEVICES,
        ratePerDevice: 2,
        qos: 1,
        sourceAddresses: parseSourceAddresses('127.0.0.2-127.0.0.3'),
        sourcePortStart: PORT_START,
      },
      { processes: 3, workerPath: WORKER, reportIntervalMs: 250, onProgress: (p) => progress.push(p) },
    );
    const lost: string[] = [];
    run.fleet.on('worker-lost', (index, _pid, reason) => lost.push(`${index}: ${reason}`));
    const pids = run.fleet.pids();
    expect(pids).toHaveLength(3);
    expect(run.summary).toMatchObject({ devices: DEVICES, processes: 3, connected: DEVICES, connectFailures: 0 });
    expect(run.summary.rampSeconds).toBeGreaterThan(0);
    expect(run.summary.connectsPerSec).toBeGreaterThan(0);
    expect(run.summary.slowestConnectMs).toBeGreaterThan(0);
    expect(run.summary.slowestConnectMs).toBeLessThanOrEqual(run.summary.rampSeconds * 1000);

    // The broker saw 900 distinct clients: no two processes shared an index.
    expect(clientEvents).toBe(DEVICES);
    expect(clientIds).toEqual(new Set(Array.from({ length: DEVICES }, (_, i) => `sim-${i}`)));
    expect(remoteAddresses).toEqual(new Set(['127.0.0.2', '127.0.0.3']));
    // 3 windows of 150 ports (300 devices over 2 addresses each). A port held
    // by some other program's listener falls back to a kernel-chosen one, so
    // this allows a few strays rather than demanding all 900.
    const inWindow = remotePorts.filter((p) => p >= PORT_START && p < PORT_START + 450);
    expect(inWindow.length).toBeGreaterThanOrEqual(DEVICES - 10);

    // A command to a device of the last worker finds it, and its latency reaches the merged histogram.
    const command = encodeTelemetry(777, 1, nowMs(), 32);
    await new Promise<void>((resolve, reject) =>
      broker.publish(
        { cmd: 'publish', topic: 'devices/sim-777/commands', payload: command, qos: 1, retain: false, dup: false },
        (err) => (err ? reject(err) : resolve()),
      ),
    );
    await waitFor(() => replies.length > 0, 2000);
    expect(replies.map((r) => r.topic)).toEqual(['devices/sim-777/replies']);

    await sleep(1200);
    const final = await run.stop();
    const perWorker = run.fleet.workerStats();

    expect(lost).toEqual([]);
    for (const pid of pids) expect(isRunning(pid), `worker ${pid}`).toBe(false);

    expect(final).toMatchObject({
      devices: DEVICES,
      processes: 3,
      connected: DEVICES,
      connectFailures: 0,
      received: 1,
      replies: 1,
      disconnects: 0,
      malformed: 0,
      lostWorkers: 0,
    });
    expect(perWorker.map((s) => s?.devices)).toEqual([300, 300, 300]);
    expect(perWorker.map((s) => s?.connected)).toEqual([0, 0, 0]);
    for (const key of ['connects', 'sent', 'acked', 'skipped', 'received'] as const) {
      expect(sum(perWorker, key), key).toBe(key === 'connects' ? final.connected : final[key]);
    }
    expect(final.slowestConnectMs).toBe(Math.max(...perWorker.map((s) => Number(s!.slowestConnectMs.toFixed(3)))));
    expect(final.commandP50Ms).toBeGreaterThan(0);
    expect(final.publishAckP99Ms).toBeGreaterThan(0);
    // At 2/s each device's first message is due within 0.5 s of its SUBACK and
    // the run lasts over a second past the ramp, so every device sent at least
    // once even on a loaded machine. Acks in flight at stop() are the only gap.
    expect(final.sent).toBeGreaterThanOrEqual(DEVICES);
    expect(final.acked).toBeLessThanOrEqual(final.sent);
    expect(final.peakRssBytes).toBeGreaterThan(0);
    // Every publish was written before its device's DISCONNECT, so aedes counts them all.
    await waitFor(() => telemetryByPrefix.get('sim-') === final.sent, 2000);
    expect(telemetryByPrefix.get('sim-')).toBe(final.sent);

    expect(progress.length).toBeGreaterThan(0);
    expect(progress.at(-1)!.stats.connects).toBe(DEVICES);
  }, 20_000);

  it('falls back to a kernel-chosen port when the planned source port is taken', async () => {
    const squatter = net.createServer();
    squatter.listen(0, '127.0.0.2');
    await once(squatter, 'listening');
    const taken = (squatter.address() as net.AddressInfo).port;
    const fleet = new DeviceFleet({
      port,
      devices: 2,
      ratePerDevice: 0,
      clientIdPrefix: 'squat-',
      sourceAddresses: ['127.0.0.2'],
      sourcePortStart: taken,
    });
    const failures: string[] = [];
    fleet.on('connect-failure', (_id, reason) => failures.push(reason));
    await fleet.start();
    const stats = fleet.stats();
    await fleet.stop();
    await new Promise<void>((resolve) => squatter.close(() => resolve()));
    expect(failures).toEqual([]);
    expect(stats).toMatchObject({ connects: 2, connectFailures: 0 });
  });

  it('a worker whose parent goes away disconnects its devices and exits', async () => {
    const child = fork(WORKER, [], { execArgv: [], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    const exited = once(child, 'exit');
    const messages: WorkerMessage[] = [];
    child.on('message', (m) => messages.push(m as WorkerMessage));
    await waitFor(() => messages.some((m) => m.type === 'ready'), 10_000);
    child.send({ type: 'start', options: { port, devices: 20, clientIdPrefix: 'orphan-' }, reportIntervalMs: 100 });
    await waitFor(() => messages.some((m) => m.type === 'report' && m.report.ramped), 5000);
    const before = clientEvents;
    expect([...clientIds].filter((id) => id.startsWith('orphan-'))).toHaveLength(20);
    expect(before).toBeGreaterThan(0);

    // What the child sees when its parent dies: the IPC channel closes.
    child.disconnect();
    const [code] = (await Promise.race([exited, sleep(5000).then(() => ['timeout'])])) as [number | string];
    expect(code).toBe(0);
    await waitFor(() => broker.connectedClients === 0, 2000);
    expect(broker.connectedClients).toBe(0);
  }, 15_000);

  it('the CLI forks workers and prints one JSON summary line on stdout', async () => {
    const { stdout, stderr } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) => {
      execFile(
        process.execPath,
        [CLI, '--port', String(port), '--devices', '40', '--processes', '2', '--duration', '1', '--prefix', 'cli-'],
        { timeout: 15_000 },
        (err, out, errOut) => (err ? reject(new Error(`${err.message}\n${errOut}`)) : resolve({ stdout: out, stderr: errOut })),
      );
    });
    const lines = stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const summary = JSON.parse(lines[0]) as Record<string, unknown>;
    expect(summary).toMatchObject({ type: 'summary', devices: 40, processes: 2, connected: 40, connectFailures: 0 });
    expect(stderr).toMatch(/connected \d+\/40/);
  }, 15_000);
});
