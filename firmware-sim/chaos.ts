#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { runCli } from '../shared/cli-support.js';
import { endStatus, fraction, nonNegativeInteger, runFor, statusLine } from './run-support.js';
import { Scenario, SCENARIO_DEFAULTS } from './scenario.js';

const HELP = `npm run chaos -- [options]: devices publish numbered QoS 1 messages while tunnels are broken at random

  --devices N         simulated devices (default 50)
  --duration S        seconds of traffic under chaos (default 30)
  --kill-every MS     break one tunnel this often (default 2000)
  --half-open F       share of breaks that freeze a tunnel instead of closing it (default 0.5)
  --rate R            messages per device per second (default 2)
  --tunnels K         tunnels in the agent's pool (default 2)
  --heartbeat-ms MS   tunnel heartbeat (default 500)
  --dead-after-ms MS  silence after which a tunnel is declared dead (default 2000)
  --data-dir DIR      where the development PKI is kept (default .edgemux)`;

/** How long the run may take after the chaos stops for every message in flight to land. */
const DRAIN_TIMEOUT_MS = 30_000;

runCli(async () => {
  const { values } = parseArgs({
    options: {
      devices: { type: 'string' },
      duration: { type: 'string' },
      'kill-every': { type: 'string' },
      'half-open': { type: 'string' },
      rate: { type: 'string' },
      tunnels: { type: 'string' },
      'heartbeat-ms': { type: 'string' },
      'dead-after-ms': { type: 'string' },
      'data-dir': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  const killEveryMs = nonNegativeInteger(values['kill-every'], '--kill-every', 2000);
  const halfOpenShare = fraction(values['half-open'], '--half-open', 0.5);
  const scenario = await Scenario.start({
    ...SCENARIO_DEFAULTS,
    devices: nonNegativeInteger(values.devices, '--devices', 50),
    ratePerDevice: Number(values.rate ?? 2),
    qos: 1,
    tunnels: Math.max(1, nonNegativeInteger(values.tunnels, '--tunnels', 2)),
    heartbeatMs: Math.max(50, nonNegativeInteger(values['heartbeat-ms'], '--heartbeat-ms', 500)),
    deadAfterMs: Math.max(150, nonNegativeInteger(values['dead-after-ms'], '--dead-after-ms', 2000)),
    devicePort: 0,
    appPort: 0,
    chaos: true,
    dataDir: values['data-dir'] ?? SCENARIO_DEFAULTS.dataDir,
    logLevel: process.env.EDGEMUX_LOG_LEVEL ?? 'error',
  });
  await scenario.startTraffic();
  const proxy = scenario.proxy!;
  const fleet = scenario.fleet!;
  const app = scenario.app!;

  const chaos = killEveryMs > 0 ? setInterval(() => proxy.breakOne(halfOpenShare), killEveryMs) : undefined;
  const status = setInterval(() => {
    const agent = scenario.agent.stats();
    const sent = fleet.stats().sent;
    statusLine(
      `tunnels up ${agent.tunnelsUp}  detached streams ${agent.detached}  breaks ${proxy.kills + proxy.freezes}  ` +
        `published ${sent}  delivered ${app.sequences.delivered}  device disconnects ${fleet.stats().disconnects}`,
    );
  }, 1000);

  await runFor(nonNegativeInteger(values.duration, '--duration', 30));
  clearInterval(chaos);
  await scenario.drain(DRAIN_TIMEOUT_MS);
  clearInterval(status);
  endStatus();
  const fleetStats = fleet.stats();
  const appStats = app.stats();
  const summary = {
    devices: fleetStats.devices,
    tunnelKills: proxy.kills + proxy.freezes,
    deviceDisconnects: fleetStats.disconnects + fleetStats.connectFailures,
    published: fleetStats.sent,
    delivered: appStats.delivered,
    lost: Math.max(0, fleetStats.sent - appStats.delivered),
    duplicates: appStats.duplicates,
    outOfOrder: appStats.outOfOrder,
  };
  await scenario.stop();
  process.stdout.write(`${JSON.stringify(summary)}\n`);
});
