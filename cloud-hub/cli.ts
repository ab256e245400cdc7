#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { numberFlag, onShutdown, runCli } from '../shared/cli-support.js';
import { readConfigFile, validateConfig } from '../shared/config-loader.js';
import { LogFile, ReopenLogOnSignal } from '../shared/log-file.js';
import { createLogger } from '../shared/logger.js';
import { ReloadOnSignal } from '../shared/reload.js';
import { type HubConfig, hubConfigSchema } from './config.js';
import { startMetricsServer } from '../shared/metrics-server.js';
import { hubMetrics, hubReadiness } from './hub-metrics.js';
import { startHub } from './main.js';
import { runPkiCommand } from './pki-cli.js';
import { reloadHub, runningHub } from './reload.js';
import { OPEN_NAMESPACES } from './routes.js';
import { readAdminToken, startAdminApi } from './admin-api.js';
import type { SettingsDiff } from '../shared/reload.js';

const HELP = `cloud-hub: takes agent tunnels apart into device sessions on a broker

Usage: cloud-hub [options]
  --config FILE        YAML configuration (flags override it)
  --hub-id ID          name of this hub (default hub-1)
  --tunnel-host HOST   address for agent tunnels (default 0.0.0.0)
  --tunnel-port PORT   port for agent tunnels, mutual TLS (default 8883)
  --app-host HOST      address for cloud MQTT applications (default 127.0.0.1; any other address
                       needs --app-password-file or --app-allow-anonymous)
  --app-port PORT      port for cloud MQTT applications (default 1883)
  --app-password-file FILE  application user names and passwords, written by mosquitto_passwd
  --app-allow-anonymous     let applications in without credentials on any address: anyone who
                       reaches the port reads and publishes every topic
  --open-namespaces    let every agent use every client ID (namespaces: [{agentId: '*', clientIds: ['*']}]);
                       without it and without namespaces, agent A may use only client IDs "A:*"
  --ca FILE --cert FILE --key FILE   TLS material (CA of the agents, hub certificate and key)
  --dev-pki DIR        create or reuse a development PKI in DIR instead of --ca/--cert/--key
  --pki-dir DIR        a PKI made by 'cloud-hub pki init': agents enroll with tokens and renew on the
                       tunnel port, revocations take effect within a second (see 'cloud-hub pki --help')
  --cert-validity DUR  lifetime of the certificates issued to agents (default 30d)
  --state FILE         SQLite file keeping persistent sessions, retained messages and offline
                       queues across restarts, and the agent/device registry (default: in memory)
  --admin-port PORT    serve the admin API and status page on 127.0.0.1:PORT (--admin-host to change)
  --admin-token-file FILE  file holding the admin API's bearer token (required with --admin-port)
  --metrics-port PORT  serve Prometheus /metrics, /healthz and /readyz on 127.0.0.1:PORT (--metrics-host to change)
  --log-level LEVEL    fatal|error|warn|info|debug|trace|silent (default info)
  --log-file FILE      write the log to FILE (created 0640) instead of stdout
  -h, --help

SIGHUP reloads the config file (flags still override it): routes, namespaces,
log level and TLS material take effect for new sessions and tunnels; the ACL
file (acl.file) is read again and applies to the next packet of every client.
SIGUSR1 reopens the log file, for logrotate's postrotate.`;

if (process.argv[2] === 'pki') {
  runCli(() => runPkiCommand(process.argv.slice(3), (text) => process.stdout.write(`${text}\n`)));
} else runCli(async () => {
  const reloads = new ReloadOnSignal();
  const logReopens = new ReopenLogOnSignal();
  const { values } = parseArgs({
    options: {
      config: { type: 'string' },
      'hub-id': { type: 'string' },
      'tunnel-host': { type: 'string' },
      'tunnel-port': { type: 'string' },
      'app-host': { type: 'string' },
      'app-port': { type: 'string' },
      'app-password-file': { type: 'string' },
      'app-allow-anonymous': { type: 'boolean' },
      'open-namespaces': { type: 'boolean' },
      ca: { type: 'string' },
      cert: { type: 'string' },
      key: { type: 'string' },
      'dev-pki': { type: 'string' },
      'pki-dir': { type: 'string' },
      'cert-validity': { type: 'string' },
      state: { type: 'string' },
      'metrics-port': { type: 'string' },
      'metrics-host': { type: 'string' },
      'admin-port': { type: 'string' },
      'admin-host': { type: 'string' },
      'admin-token-file': { type: 'string' },
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
  const loadConfig = (): HubConfig => {
    const fromFile = values.config ? readConfigFile(values.config) : {};
    const tlsFlags = values.ca || values.cert || values.key ? { tls: { ca: values.ca, cert: values.cert, key: values.key } } : {};
    return validateConfig(
      hubConfigSchema,
      [
        fromFile,
        {
          hubId: values['hub-id'],
          tunnel: { host: values['tunnel-host'], port: numberFlag(values['tunnel-port']) },
          app: {
            host: values['app-host'],
            port: numberFlag(values['app-port']),
            passwordFile: values['app-password-file'],
            allowAnonymous: values['app-allow-anonymous'],
          },
          ...tlsFlags,
          ...(values['open-namespaces'] ? { namespaces: OPEN_NAMESPACES } : {}),
          devPki: values['dev-pki'],
          pkiDir: values['pki-dir'],
          enrollment: { certValidity: values['cert-validity'] },
          statePath: values.state,
          ...(values['metrics-port'] !== undefined ? { metrics: { host: values['metrics-host'], port: numberFlag(values['metrics-port']) } } : {}),
          ...(values['admin-port'] !== undefined || values['admin-token-file'] !== undefined
            ? { admin: { host: values['admin-host'], port: numberFlag(values['admin-port']), tokenFile: values['admin-token-file'] } }
            : {}),
          logLevel: values['log-level'],
          logFile: values['log-file'],
        },
      ],
      'cloud-hub',
    );
  };
  const config = loadConfig();
  const adminToken = config.admin === undefined ? null : readAdminToken(config.admin.tokenFile);
  const logFile = config.logFile === undefined ? null : new LogFile({ path: config.logFile, maxBytes: config.logMaxBytes, keep: config.logKeep });
  const log = createLogger('cloud-hub', config.logLevel, logFile?.destination);
  logReopens.use(logFile, log);
  const hub = await startHub(config, log);
  const metrics = config.metrics
    ? await startMetricsServer({ ...config.metrics, registry: hubMetrics(hub), ready: () => hubReadiness(hub), details: () => ({ ...hub.stats() }) })
    : null;
  let running = await runningHub(config);
  // The admin API and SIGHUP share one queue, so two reloads never interleave.
  let reloading: Promise<unknown> = Promise.resolve();
  const reload = (): Promise<SettingsDiff> => {
    const next = reloading.then(async () => {
      const nextConfig = loadConfig();
      // Read before anything is swapped: a bad token file refuses the whole reload.
      // The new file when the reloaded config names one; the API itself (port, host) needs a restart.
      const tokenFile = nextConfig.admin?.tokenFile ?? running.config.admin?.tokenFile;
      const token = tokenFile === undefined ? null : readAdminToken(tokenFile);
      running = await reloadHub(hub, running, nextConfig, log);
      if (token !== null) admin?.setToken(token);
      return running.applied;
    });
    reloading = next.catch(() => {});
    return next;
  };
  const admin = config.admin && adminToken !== null ? await startAdminApi({ ...config.admin, token: adminToken, hub, log, reload }) : null;
  reloads.use(async () => {
    await reload();
  }, log);
  onShutdown(async () => {
    await admin?.close();
    await metrics?.close();
    await hub.close();
  });
});
