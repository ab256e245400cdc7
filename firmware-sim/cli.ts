#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DeviceFleet, type FleetStats } from './device-fleet.js';
import { DistributedFleet } from './distributed-fleet.js';
import { FleetConfigError, type FleetOptions } from './fleet-config.js';
import { defaultProcessCount } from './fleet-plan.js';
import { ReasonTally } from './reason-tally.js';
import { summarize, type FleetRunSummary } from './run-summary.js';
import { endStatus, residentSetBytes, statusLine } from './run-support.js';
import {
  DEVICES_PER_SOURCE_ADDRESS,
  defaultSourcePool,
  devicesPerAddress,
  isIpv4Loopback,
  parseSourceAddresses,
} from './source-addresses.js';
import { rampText, runText, statusJson, type StatusSample } from './status-text.js';
import { FleetWorkerError } from './worker-process.js';

const USAGE = `Usage: firmware-sim [options]

Simulates many MQTT devices, from one process or several. Each device
publishes telemetry, subscribes to its command topic and replies to commands.

  --host <host>                 broker host (127.0.0.1)
  --port <port>                 broker port (1883)
  --devices <n>                 number of devices (100)
  --processes <n>               worker processes; 1 runs in this process
                                (one per 15000 devices, rounded up)
  --rate <msgs/s>               telemetry per device per second, 0 = none (1)
  --qos <0|1|2>                 telemetry QoS (0)
  --payload <bytes>             telemetry payload size, at least 16 (64)
  --topic <template>            telemetry topic, {id} = client id (devices/{id}/telemetry)
  --duration <s>                seconds to run after all devices connected, 0 = until Ctrl-C (10)
  --keepalive <s>               MQTT keepalive (60)
  --prefix <text>               client id prefix (sim-)
  --protocol <4|5>              MQTT protocol level (4)
  --source-addresses <list>     local addresses to bind, round robin: a,b,c or an IPv4
                                range first-last, e.g. 127.0.0.2-127.0.0.9 (with a
                                loopback --host and over 20000 devices: 127.0.0.2
                                upward, one address per 20000 devices)
  --source-port-start <port>    with source addresses: the k-th device on each address
                                binds this port + k; 0 lets the kernel choose, which
                                gets slow past a few thousand ports per address (10000)
  --concurrency <n>             connects in flight, shared by all processes (500)
  --json                        status lines as JSON
  -h, --help                    show this help

A status line goes to stderr every second (a progress bar while connecting,
on a terminal); a JSON summary goes to stdout at the end.`;

const EXIT_USAGE = 2;
const EXIT_INTERRUPTED_TWICE = 130;
/**
 * Below the Linux ephemeral range (32768–60999), so kernel-chosen ports of
 * other sockets do not collide with ours; 20 000 devices per address fit
 * before reaching it.
 */
const DEFAULT_SOURCE_PORT_START = 10_000;
/** Descriptors a worker needs besides its device sockets: stdio, IPC, libuv internals. */
const DESCRIPTOR_RESERVE = 32;

class UsageError extends Error {}

/** Option key → the flag that sets it, so config errors name the flag. */
const FLAG_FOR_KEY: Record<string, string> = {
  host: '--host',
  port: '--port',
  devices: '--devices',
  processes: '--processes',
  ratePerDevice: '--rate',
  qos: '--qos',
  payloadSize: '--payload',
  topicTemplate: '--topic',
  keepaliveSeconds: '--keepalive',
  clientIdPrefix: '--prefix',
  protocolVersion: '--protocol',
  sourceAddresses: '--source-addresses',
  sourcePortStart: '--source-port-start',
  connectConcurrency: '--concurrency',
};

interface CliSettings {
  options: FleetOptions;
  processes: number;
  durationS: number;
  json: boolean;
  /** Decisions taken for the user, said on stderr before the run. */
  notices: string[];
}

function integerFlag(flag: string, raw: string): number {
  if (!/^\d+$/.test(raw)) throw new UsageError(`${flag} must be a non-negative integer, got '${raw}'`);
  return Number(raw);
}

function numberFlag(flag: string, raw: string): number {
  const value = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(value) || value < 0) {
    throw new UsageError(`${flag} must be a non-negative number, got '${raw}'`);
  }
  return value;
}

/** The soft RLIMIT_NOFILE of this process (children inherit it); undefined where /proc is missing. */
function descriptorLimit(): number | undefined {
  try {
    const match = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

function addressRange(addresses: string[]): string {
  return addresses.length === 1 ? addresses[0] : `${addresses[0]}-${addresses[addresses.length - 1]}`;
}

/** Source addresses given, or chosen when one address's ephemeral ports would not do. */
function chooseSourceAddresses(
  spec: string | undefined,
  host: string,
  devices: number,
  notices: string[],
): string[] | undefined {
  if (spec !== undefined) {
    const addresses = parseSourceAddresses(spec);
    const perAddress = devicesPerAddress(devices, addresses.length);
    if (perAddress > DEVICES_PER_SOURCE_ADDRESS) {
      notices.push(
        `${perAddress} devices per source address (over ${DEVICES_PER_SOURCE_ADDRESS}): ` +
          'connects may fail with EADDRNOTAVAIL when the ephemeral ports run out',
      );
    }
    return addresses;
  }
  const pool = defaultSourcePool(devices);
  if (pool === null) return undefined;
  if (!isIpv4Loopback(host)) {
    notices.push(
      `${devices} devices from one source address may exhaust its ephemeral ports; ` +
        'give --source-addresses with addresses that can reach the broker',
    );
    return undefined;
  }
  notices.push(
    `binding source addresses ${addressRange(pool)} (${DEVICES_PER_SOURCE_ADDRESS} devices per address, ` +
      'so ephemeral ports do not run out); --source-addresses overrides',
  );
  return pool;
}

function parseCli(argv: string[]): CliSettings | 'help' {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'string', default: '1883' },
        devices: { type: 'string', default: '100' },
        processes: { type: 'string' },
        rate: { type: 'string', default: '1' },
        qos: { type: 'string', default: '0' },
        payload: { type: 'string', default: '64' },
        topic: { type: 'string', default: 'devices/{id}/telemetry' },
        duration: { type: 'string', default: '10' },
        keepalive: { type: 'string', default: '60' },
        prefix: { type: 'string', default: 'sim-' },
        protocol: { type: 'string', default: '4' },
        'source-addresses': { type: 'string' },
        'source-port-start': { type: 'string' },
        concurrency: { type: 'string', default: '500' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    // parseArgs messages already name the offending flag.
    throw new UsageError((err as Error).message);
  }
  const v = parsed.values;
  if (v.help) return 'help';
  const notices: string[] = [];
  const devices = integerFlag('--devices', v.devices);
  const processes = v.processes === undefined ? defaultProcessCount(devices) : integerFlag('--processes', v.processes);
  if (processes < 1) throw new UsageError(`--processes must be at least 1, got '${v.processes}'`);
  const sourceAddresses = chooseSourceAddresses(v['source-addresses'], v.host, devices, notices);
  const portStartFlag = v['source-port-start'];
  const explicitPortStart = portStartFlag === undefined ? undefined : integerFlag('--source-port-start', portStartFlag);
  const sourcePortStart =
    explicitPortStart === 0
      ? undefined
      : (explicitPortStart ?? (sourceAddresses !== undefined ? DEFAULT_SOURCE_PORT_START : undefined));
  const limit = descriptorLimit();
  const perProcess = Math.ceil(devices / processes);
  if (limit !== undefined && perProcess + DESCRIPTOR_RESERVE > limit) {
    notices.push(
      `${perProcess} devices per process but each may open only ${limit} descriptors (ulimit -n): ` +
        `use --processes ${Math.ceil(devices / (limit - DESCRIPTOR_RESERVE))} or more`,
    );
  }
  const options: FleetOptions = {
    host: v.host,
    port: integerFlag('--port', v.port),
    devices,
    ratePerDevice: numberFlag('--rate', v.rate),
    qos: integerFlag('--qos', v.qos) as 0 | 1 | 2,
    payloadSize: integerFlag('--payload', v.payload),
    topicTemplate: v.topic,
    keepaliveSeconds: integerFlag('--keepalive', v.keepalive),
    clientIdPrefix: v.prefix,
    protocolVersion: integerFlag('--protocol', v.protocol) as 4 | 5,
    connectConcurrency: integerFlag('--concurrency', v.concurrency),
    ...(sourceAddresses !== undefined ? { sourceAddresses } : {}),
    ...(sourcePortStart !== undefined ? { sourcePortStart } : {}),
  };
  return { options, processes, durationS: numberFlag('--duration', v.duration), json: v.json, notices };
}

/** What the CLI drives: one DeviceFleet here, or a DistributedFleet of workers. */
interface FleetRunner {
  readonly processes: number;
  start(): Promise<void>;
  stop(): Promise<void>;
  stats(): FleetStats;
  summary(): FleetRunSummary;
  /** Called once a second by the status loop. */
  sample(): void;
}

/** Today's single-process mode: no fork, the fleet lives in this process. */
function inProcessRunner(fleet: DeviceFleet): FleetRunner {
  const disconnectReasons = new ReasonTally();
  const connectFailureReasons = new ReasonTally();
  fleet.on('disconnect', (_id, reason) => disconnectReasons.add(reason));
  fleet.on('connect-failure', (_id, reason) => connectFailureReasons.add(reason));
  let peakRssBytes = 0;
  const sample = (): void => {
    peakRssBytes = Math.max(peakRssBytes, residentSetBytes());
  };
  return {
    processes: 1,
    start: () => fleet.start(),
    stop: () => fleet.stop(),
    stats: () => fleet.stats(),
    sample,
    summary: () => {
      sample();
      return summarize(fleet.stats(), {
        processes: 1,
        peakRssBytes,
        lostWorkers: 0,
        connectFailureReasons: connectFailureReasons.toJSON(),
        disconnectReasons: disconnectReasons.toJSON(),
      });
    },
  };
}

function distributedRunner(fleet: DistributedFleet): FleetRunner {
  fleet.on('worker-lost', (index, pid, reason) => {
    if (process.stderr.isTTY) endStatus();
    process.stderr.write(`firmware-sim: worker ${index} (pid ${pid}) lost: ${reason}\n`);
  });
  return {
    processes: fleet.settings.processes,
    start: () => fleet.start(),
    stop: () => fleet.stop(),
    stats: () => fleet.stats(),
    summary: () => fleet.summary(),
    sample: () => {},
  };
}

function usageFailure(err: UsageError | FleetConfigError): number {
  const flag = err instanceof FleetConfigError ? FLAG_FOR_KEY[err.key] : undefined;
  const message = flag !== undefined ? `${flag}: ${err.message.replace(/^[^:]*: /, '')}` : err.message;
  process.stderr.write(`firmware-sim: ${message}\n\n${USAGE}\n`);
  return EXIT_USAGE;
}

async function main(argv: string[]): Promise<number> {
  let settings: CliSettings | 'help';
  let runner: FleetRunner;
  try {
    settings = parseCli(argv);
    if (settings === 'help') {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    runner =
      settings.processes === 1
        ? inProcessRunner(new DeviceFleet(settings.options))
        : distributedRunner(new DistributedFleet(settings.options, { processes: settings.processes }));
  } catch (err) {
    if (err instanceof UsageError || err instanceof FleetConfigError) return usageFailure(err);
    throw err;
  }
  const { durationS, json } = settings;
  for (const notice of settings.notices) process.stderr.write(`firmware-sim: ${notice}\n`);

  let ramping = true;
  let last = { connects: 0, sent: 0, at: performance.now() };
  const takeSample = (): StatusSample => {
    runner.sample();
    const stats = runner.stats();
    const at = performance.now();
    const seconds = Math.max(1e-3, (at - last.at) / 1000);
    const sample = {
      stats,
      processes: runner.processes,
      connectsPerSec: (stats.connects - last.connects) / seconds,
      sentPerSec: (stats.sent - last.sent) / seconds,
    };
    last = { connects: stats.connects, sent: stats.sent, at };
    return sample;
  };
  const showSample = (sample: StatusSample): void => {
    if (json) process.stderr.write(`${statusJson(sample, ramping)}\n`);
    else if (ramping) statusLine(rampText(sample, process.stderr.isTTY === true));
    else process.stderr.write(`${runText(sample)}\n`);
  };
  const status = setInterval(() => showSample(takeSample()), 1000);

  let interrupted = false;
  let wake: () => void = () => {};
  const interruptedOrDone = new Promise<void>((resolve) => {
    wake = resolve;
  });
  const onSignal = (): void => {
    // A second Ctrl-C means the orderly stop is taking too long; workers exit
    // by themselves when this process goes (their IPC channel closes).
    if (interrupted) process.exit(EXIT_INTERRUPTED_TWICE);
    interrupted = true;
    wake();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  let startError: unknown = null;
  await Promise.race([runner.start().catch((err: unknown) => void (startError = err)), interruptedOrDone]);
  if (!json && process.stderr.isTTY) {
    // Leave the finished bar on screen, then one line per second below it. Its
    // rate is the ramp's average: the last sample may span a few milliseconds.
    const sample = takeSample();
    const rampS = sample.stats.rampMs / 1000;
    statusLine(rampText({ ...sample, connectsPerSec: rampS > 0 ? sample.stats.connects / rampS : 0 }, true));
    endStatus();
  }
  ramping = false;
  const stats = runner.stats();
  const sentBeforeRun = stats.sent;
  const connectedAt = performance.now();
  if (startError === null && !interrupted && durationS > 0) {
    const timer = setTimeout(wake, durationS * 1000);
    await interruptedOrDone;
    clearTimeout(timer);
  } else if (startError === null && !interrupted) {
    await interruptedOrDone;
  }
  const runSeconds = (performance.now() - connectedAt) / 1000;
  await runner.stop();
  clearInterval(status);
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  if (startError !== null) {
    const message = startError instanceof FleetWorkerError ? startError.message : String(startError);
    process.stderr.write(`firmware-sim: ${message}\n`);
    return 1;
  }

  const summary = runner.summary();
  process.stdout.write(
    `${JSON.stringify({
      type: 'summary',
      ...summary,
      runSeconds: Number(runSeconds.toFixed(3)),
      // Over the run only; the connect ramp would understate it.
      sentPerSec: runSeconds > 0 ? Math.round((summary.sent - sentBeforeRun) / runSeconds) : 0,
      interrupted,
    })}\n`,
  );
  return summary.connectFailures === summary.devices || summary.lostWorkers > 0 ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`firmware-sim: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
