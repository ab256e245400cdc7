#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { runCli } from '../shared/cli-support.js';
import { endStatus, nonNegativeInteger, runFor, statusLine } from './run-support.js';
import { Scenario, SCENARIO_DEFAULTS } from './scenario.js';

const HELP = `npm start -- [options]: hub, agent, simulated devices and a cloud application on this machine

  --devices N        simulated devices (default 200; 0 runs only hub and agent for your own devices)
  --duration S       seconds to run (default 0: until Ctrl-C)
  --device-port P    port devices connect to at the agent (default 1883)
  --app-port P       port cloud applications connect to at the hub (default 1884)
  --rate R           telemetry messages per device per second (default 1)
  --data-dir DIR     where the development PKI is kept (default .edgemux)`;

/** Each device gets a command from the cloud application about this often. */
const COMMAND_PERIOD_MS = 5000;

runCli(async () => {
  const { values } = parseArgs({
    options: {
      devices: { type: 'string' },
      duration: { type: 'string' },
      'device-port': { type: 'string' },
      'app-port': { type: 'string' },
      rate: { type: 'string' },
      'data-dir': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  const devices = nonNegativeInteger(values.devices, '--devices', SCENARIO_DEFAULTS.devices);
  const duration = nonNegativeInteger(values.duration, '--duration', 0);
  const rate = Number(values.rate ?? SCENARIO_DEFAULTS.ratePerDevice);
  const scenario = await Scenario.start({
    ...SCENARIO_DEFAULTS,
    devices,
    ratePerDevice: Number.isFinite(rate) && rate >= 0 ? rate : SCENARIO_DEFAULTS.ratePerDevice,
    devicePort: nonNegativeInteger(values['device-port'], '--device-port', SCENARIO_DEFAULTS.devicePort),
    appPort: nonNegativeInteger(values['app-port'], '--app-port', SCENARIO_DEFAULTS.appPort),
    dataDir: values['data-dir'] ?? SCENARIO_DEFAULTS.dataDir,
  });
  const devicePort = scenario.agent.deviceAddress.port;
  const appPort = scenario.hub.appAddress.port;
  if (devices === 0) {
    process.stdout.write(
      `${JSON.stringify({ devicePort, appPort, message: `devices: mqtt://127.0.0.1:${devicePort}  applications: mqtt://127.0.0.1:${appPort}` })}\n`,
    );
    await runFor(duration);
    await scenario.stop();
    return;
  }

  await scenario.startTraffic();
  const fleet = scenario.fleet!;
  const app = scenario.app!;
  const clientIds = fleet.clientIds();
  let commandCursor = 0;
  const commandsPerTick = Math.max(1, Math.round((clientIds.length * 1000) / COMMAND_PERIOD_MS / 10));
  const commander = setInterval(() => {
    for (let i = 0; i < commandsPerTick; i++) app.sendCommand(clientIds[commandCursor++ % clientIds.length]);
  }, 100);

  let lastUp = 0;
  let lastDown = 0;
  const status = setInterval(() => {
    const agent = scenario.agent.stats();
    const appStats = app.stats();
    const fleetStats = fleet.stats();
    statusLine(
      `devices ${agent.attached}  tunnels ${agent.tunnelsUp}  WAN connections ${agent.wanConnections}  ` +
        `up ${appStats.delivered - lastUp} msg/s  down ${fleetStats.received - lastDown} msg/s  ` +
        `p50 ${appStats.p50Ms.toFixed(2)} ms  p99 ${appStats.p99Ms.toFixed(2)} ms`,
    );
    lastUp = appStats.delivered;
    lastDown = fleetStats.received;
  }, 1000);

  await runFor(duration);
  clearInterval(commander);
  clearInterval(status);
  await scenario.drain(10_000);
  endStatus();
  const fleetStats = fleet.stats();
  const appStats = app.stats();
  const agentStats = scenario.agent.stats();
  const summary = {
    devices: fleetStats.connected,
    tunnels: agentStats.tunnelsUp,
    wanConnections: agentStats.wanConnections,
    published: fleetStats.sent,
    delivered: appStats.delivered,
    lost: Math.max(0, fleetStats.sent - appStats.delivered),
    p50Ms: appStats.p50Ms,
    p99Ms: appStats.p99Ms,
  };
  await scenario.stop();
  process.stdout.write(`${JSON.stringify(summary)}\n`);
});
