#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { numberFlag, onShutdown, runCli } from '../shared/cli-support.js';
import { readConfigFile, validateConfig } from '../shared/config-loader.js';
import { type AgentConfig, agentConfigSchema } from './config.js';
import { LogFile, ReopenLogOnSignal } from '../shared/log-file.js';
import { createLogger } from '../shared/logger.js';
import { ReloadOnSignal } from '../shared/reload.js';
import { ensureDevPki } from '../shared/pki.js';
import { startMetricsServer } from '../shared/metrics-server.js';
import { agentMetrics, agentReadiness } from './agent-metrics.js';
import { runEnrollCommand, enrollIfNeeded, startRenewal } from './enroll-cli.js';
import { serverNameOf, startAgent } from './main.js';
import { reloadAgent, runningAgent } from './reload.js';
import { onReloadFromPrimary, requestLogRotation, superviseWorkers, workerIndex } from './workers.js';

const HELP = `edge-agent: carries local MQTT devices over multiplexed TLS tunnels to a cloud hub

Usage: edge-agent [options]
  --config FILE        YAML configuration (flags override it)
  --agent-id ID        this agent's name, the CN of its certificate (default agent-1)
  --host HOST          address devices connect to over TCP (default 0.0.0.0)
  --port PORT          MQTT port devices connect to (default 1883); TLS and
                       WebSocket listeners are set in the config file (listeners)
  --hub HOST:PORT      a hub tunnel address; repeat for several hubs (default 127.0.0.1:8883)
  --tunnels K          tunnels kept to the hubs (default 2)
  --workers N          processes sharing the device port, each with its own tunnels (default 1)
  --ca FILE --cert FILE --key FILE   TLS material (CA of the hub, agent certificate and key)
  --server-name NAME   name the hub certificate must carry (default: the hub host)
  --transports LIST    how tunnels reach the hub, in order of preference (default tls,websocket,proxy)
  --proxy URL          HTTP CONNECT proxy, http://[user:password@]host:port (default: HTTPS_PROXY; NO_PROXY honoured)
  --dev-pki DIR        create or reuse a development PKI in DIR instead of --ca/--cert/--key
  --identity-dir DIR   use the identity enrolled in DIR (see 'edge-agent enroll --help'), renewing its
                       certificate in place at --renew-at of its validity (default 0.67)
  --enroll-token T --ca-fingerprint F   enroll first when DIR holds no certificate yet
                       (the token may come from EDGEMUX_ENROLL_TOKEN instead, out of the process list)
  --metrics-port PORT  serve Prometheus /metrics, /healthz and /readyz on 127.0.0.1:PORT (--metrics-host to change);
                       with --workers, each scrape is answered by one worker (label worker)
  --log-level LEVEL    fatal|error|warn|info|debug|trace|silent (default info)
  --log-file FILE      write the log to FILE (created 0640) instead of stdout
  -h, --help

SIGHUP reloads the config file (flags still override it): log level, TLS
material and hubs take effect for tunnels dialled from then on; with --workers
the primary passes the reload on to every worker. SIGUSR1 reopens the log
file, for logrotate's postrotate (the primary passes it on to the workers).`;

if (process.argv[2] === 'enroll') {
  runCli(() => runEnrollCommand(process.argv.slice(3)));
} else runCli(async () => {
  const reloads = new ReloadOnSignal();
  const logReopens = new ReopenLogOnSignal();
  const { values } = parseArgs({
    options: {
      config: { type: 'string' },
      'agent-id': { type: 'string' },
      host: { type: 'string' },
      port: { type: 'string' },
      hub: { type: 'string', multiple: true },
      tunnels: { type: 'string' },
      workers: { type: 'string' },
      ca: { type: 'string' },
      cert: { type: 'string' },
      key: { type: 'string' },
      'server-name': { type: 'string' },
      transports: { type: 'string' },
      proxy: { type: 'string' },
      'dev-pki': { type: 'string' },
      'identity-dir': { type: 'string' },
      'renew-at': { type: 'string' },
      'enroll-token': { type: 'string' },
      'ca-fingerprint': { type: 'string' },
      'metrics-port': { type: 'string' },
      'metrics-host': { type: 'string' },
      'log-level': { type: 'string' },
      'log-file': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  // The file is read again on every reload; flags keep overriding it.
  const loadConfig = (): AgentConfig => {
    const fromFile = values.config ? readConfigFile(values.config) : {};
    const tlsFlags =
      values.ca || values.cert || values.key
        ? { tls: { ca: values.ca, cert: values.cert, key: values.key, serverName: values['server-name'] } }
        : {};
    return validateConfig(
      agentConfigSchema,
      [
        fromFile,
        {
          agentId: values['agent-id'],
          listen: { host: values.host, port: numberFlag(values.port) },
          hubs: values.hub,
          tunnels: numberFlag(values.tunnels),
          transports: values.transports?.split(',').map((transport) => transport.trim()),
          ...(values.proxy !== undefined ? { proxy: { url: values.proxy } } : {}),
          workers: numberFlag(values.workers),
          ...tlsFlags,
          devPki: values['dev-pki'],
          ...(values['identity-dir'] !== undefined ? { identity: { dir: values['identity-dir'], renewAt: numberFlag(values['renew-at']), serverName: values['server-name'] } } : {}),
          ...(values['metrics-port'] !== undefined ? { metrics: { host: values['metrics-host'], port: numberFlag(values['metrics-port']) } } : {}),
          logLevel: values['log-level'],
          logFile: values['log-file'],
        },
      ],
      'edge-agent',
    );
  };
  const config = loadConfig();
  const worker = workerIndex();
  const primaryOfWorkers = worker === null && config.workers > 1;
  // With --workers every process appends to the one file; the primary alone renames it, then has all reopen.
  const logFile =
    config.logFile === undefined
      ? null
      : new LogFile(
          { path: config.logFile, maxBytes: config.logMaxBytes, keep: config.logKeep },
          { shared: config.workers > 1, rotate: worker === null ? () => rotateLog() : requestLogRotation },
        );
  // Replaced below by the primary of workers, which has them reopen after it renames.
  let rotateLog = (): void => logFile?.rotateNow();
  const baseLog = createLogger('edge-agent', config.logLevel, logFile?.destination);
  if (worker === null) {
    await enrollIfNeeded(config, values['enroll-token'] ?? process.env.EDGEMUX_ENROLL_TOKEN, values['ca-fingerprint'], baseLog);
  }
  if (primaryOfWorkers) {
    if (config.devPki !== undefined) await ensureDevPki(config.devPki, { agentIds: [config.agentId] });
    const log = baseLog;
    const supervisor = superviseWorkers(config.workers, log, () => rotateLog());
    rotateLog = () => {
      logFile?.rotateNow();
      supervisor.reopenLogs();
    };
    logReopens.use(logFile, log, () => ({ workers: supervisor.reopenLogs() }));
    // One process renews, so workers never race on the files; each takes the new certificate on the reload it passes on.
    startRenewal(config, log, () => supervisor.reloadWorkers());
    reloads.use(async () => {
      log.info({ workers: supervisor.reloadWorkers() }, 'reload passed on to the workers');
    }, log);
    return;
  }
  if (worker !== null) onReloadFromPrimary(() => reloads.request(), () => logReopens.request());
  const log = baseLog.child({ worker: worker ?? 0 });
  logReopens.use(logFile, log);
  const agent = await startAgent(config, worker ?? 0, log);
  const registry = agentMetrics(agent);
  registry.setDefaultLabels({ worker: String(worker ?? 0) });
  const metrics = config.metrics
    ? await startMetricsServer({
        ...config.metrics,
        registry,
        ready: () => agentReadiness(agent),
        details: () => ({ ...agent.stats() }),
      })
    : null;
  let running = await runningAgent(config);
  reloads.use(async () => {
    running = await reloadAgent(agent, running, loadConfig(), log);
  }, log);
  const renewal = worker === null ? startRenewal(config, log, (material) => agent.pool.useTls(material, serverNameOf(running.config))) : null;
  onShutdown(async () => {
    renewal?.stop();
    await metrics?.close();
    await agent.close();
  });
});
