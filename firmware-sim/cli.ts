#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { DeviceFleet, type FleetStats } from './device-fleet.js';
import { FleetConfigError, type FleetOptions } from './fleet-config.js';

const USAGE = `Usage: firmware-sim [options]

Simulates many MQTT devices from one process. Each device publishes telemetry,
subscribes to its command topic and replies to commands.

  --host <host>                 broker host (127.0.0.1)
  --port <port>                 broker port (1883)
  --devices <n>                 number of devices (100)
  --rate <msgs/s>               telemetry per device per second, 0 = none (1)
  --qos <0|1|2>                 telemetry QoS (0)
  --payload <bytes>             telemetry payload size, at least 16 (64)
  --topic <template>            telemetry topic, {id} = client id (devices/{id}/telemetry)
  --duration <s>                seconds to run after all devices connected, 0 = until Ctrl-C (10)
  --keepalive <s>               MQTT keepalive (60)
  --prefix <text>               client id prefix (sim-)
  --protocol <4|5>              MQTT protocol level (4)
  --source-addresses <a,b,...>  local addresses to bind, round robin
  --concurrency <n>             connects in flight (500)
  --json                        status lines as JSON
  -h, --help                    show this help

A status line goes to stderr every second; a JSON summary goes to stdout at the end.`;

const EXIT_USAGE = 2;

class UsageError extends Error {}

/** Fleet option key → the flag that sets it, so config errors name the flag. */
const FLAG_FOR_KEY: Record<string, string> = {
  host: '--host',
  port: '--port',
  devices: '--devices',
  ratePerDevice: '--rate',
  qos: '--qos',
  payloadSize: '--payload',
  topicTemplate: '--topic',
  keepaliveSeconds: '--keepalive',
  clientIdPrefix: '--prefix',
  protocolVersion: '--protocol',
  sourceAddresses: '--source-addresses',
  connectConcurrency: '--concurrency',
};

interface CliSettings {
  options: FleetOptions;
  durationS: number;
  json: boolean;
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
        rate: { type: 'string', default: '1' },
        qos: { type: 'string', default: '0' },
        payload: { type: 'string', default: '64' },
        topic: { type: 'string', default: 'devices/{id}/telemetry' },
        duration: { type: 'string', default: '10' },
        keepalive: { type: 'string', default: '60' },
        prefix: { type: 'string', default: 'sim-' },
        protocol: { type: 'string', default: '4' },
        'source-addresses': { type: 'string' },
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
  const sourceAddresses = v['source-addresses']
    ?.split(',')
    .map((a) => a.trim())
    .filter((a) => a !== '');
  const options: FleetOptions = {
    host: v.host,
    port: integerFlag('--port', v.port),
    devices: integerFlag('--devices', v.devices),
    ratePerDevice: numberFlag('--rate', v.rate),
    qos: integerFlag('--qos', v.qos) as 0 | 1 | 2,
    payloadSize: integerFlag('--payload', v.payload),
    topicTemplate: v.topic,
    keepaliveSeconds: integerFlag('--keepalive', v.keepalive),
    clientIdPrefix: v.prefix,
    protocolVersion: integerFlag('--protocol', v.protocol) as 4 | 5,
    connectConcurrency: integerFlag('--concurrency', v.concurrency),
    ...(sourceAddresses !== undefined ? { sourceAddresses } : {}),
  };
  return { options, durationS: numberFlag('--duration', v.duration), json: v.json };
}

/** Keeps the distinct reasons bounded: a fleet losing 100k devices has few distinct causes. */
class ReasonTally {
  private static readonly MAX_DISTINCT = 20;
  readonly counts = new Map<string, number>();

  add(reason: string): void {
    const key =
      this.counts.has(reason) || this.counts.size < ReasonTally.MAX_DISTINCT ? reason : 'other';
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
  }

  toJSON(): Record<string, number> {
    return Object.fromEntries(this.counts);
  }
}

function statusLine(stats: FleetStats, sentPerS: number, json: boolean): string {
  if (json) return JSON.stringify({ type: 'status', ...stats, sentPerS: Math.round(sentPerS) });
  return (
    `connected ${stats.connected}/${stats.devices}  sent/s ${sentPerS.toFixed(0)}  ` +
    `acked ${stats.acked}  received ${stats.received}  skipped ${stats.skipped}  ` +
    `disconnects ${stats.disconnects}  ack p99 ${stats.publishAckP99Ms.toFixed(2)} ms`
  );
}

async function main(argv: string[]): Promise<number> {
  let settings: CliSettings | 'help';
  let fleet: DeviceFleet;
  try {
    settings = parseCli(argv);
    if (settings === 'help') {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    fleet = new DeviceFleet(settings.options);
  } catch (err) {
    if (err instanceof UsageError || err instanceof FleetConfigError) {
      const flag = err instanceof FleetConfigError ? FLAG_FOR_KEY[err.key] : undefined;
      const message = flag !== undefined ? `${flag}: ${err.message.replace(/^[^:]*: /, '')}` : err.message;
      process.stderr.write(`firmware-sim: ${message}\n\n${USAGE}\n`);
      return EXIT_USAGE;
    }
    throw err;
  }
  const { durationS, json } = settings;

  const disconnectReasons = new ReasonTally();
  const connectFailureReasons = new ReasonTally();
  fleet.on('disconnect', (_id, reason) => disconnectReasons.add(reason));
  fleet.on('connect-failure', (_id, reason) => connectFailureReasons.add(reason));

  let lastSent = 0;
  let lastAt = performance.now();
  const status = setInterval(() => {
    const stats = fleet.stats();
    const at = performance.now();
    const sentPerS = ((stats.sent - lastSent) * 1000) / (at - lastAt);
    lastSent = stats.sent;
    lastAt = at;
    process.stderr.write(`${statusLine(stats, sentPerS, json)}\n`);
  }, 1000);

  let interrupted = false;
  let wake: () => void = () => {};
  const interruptedOrDone = new Promise<void>((resolve) => {
    wake = resolve;
  });
  const onSigint = (): void => {
    // A second Ctrl-C means the orderly stop is taking too long.
    if (interrupted) process.exit(130);
    interrupted = true;
    wake();
  };
  process.on('SIGINT', onSigint);

  const startedAt = performance.now();
  await Promise.race([fleet.start(), interruptedOrDone]);
  const connectedAt = performance.now();
  // The rate is measured over the run only; the connect ramp would understate it.
  const sentBeforeRun = fleet.stats().sent;
  if (!interrupted && durationS > 0) {
    const timer = setTimeout(wake, durationS * 1000);
    await interruptedOrDone;
    clearTimeout(timer);
  } else if (!interrupted) {
    await interruptedOrDone;
  }
  const runS = (performance.now() - connectedAt) / 1000;
  await fleet.stop();
  clearInterval(status);
  process.off('SIGINT', onSigint);

  const stats = fleet.stats();
  const summary = {
    type: 'summary',
    ...stats,
    connectS: Number(((connectedAt - startedAt) / 1000).toFixed(3)),
    runS: Number(runS.toFixed(3)),
    sentPerS: runS > 0 ? Math.round((stats.sent - sentBeforeRun) / runS) : 0,
    interrupted,
    disconnectReasons,
    connectFailureReasons,
  };
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  return stats.connectFailures === stats.devices ? 1 : 0;
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
