#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { numberFlag, onShutdown, runCli } from '../shared/cli-support.js';
import { readConfigFile, validateConfig } from '../shared/config-loader.js';
import { hubConfigSchema } from './config.js';
import { startHub } from './main.js';

const HELP = `cloud-hub: takes agent tunnels apart into device sessions on a broker

Usage: cloud-hub [options]
  --config FILE        YAML configuration (flags override it)
  --hub-id ID          name of this hub (default hub-1)
  --tunnel-host HOST   address for agent tunnels (default 0.0.0.0)
  --tunnel-port PORT   port for agent tunnels, mutual TLS (default 8883)
  --app-host HOST      address for cloud MQTT applications (default 0.0.0.0)
  --app-port PORT      port for cloud MQTT applications (default 1883)
  --ca FILE --cert FILE --key FILE   TLS material (CA of the agents, hub certificate and key)
  --dev-pki DIR        create or reuse a development PKI in DIR instead of --ca/--cert/--key
  --log-level LEVEL    fatal|error|warn|info|debug|trace|silent (default info)
  -h, --help`;

runCli(async () => {
  const { values } = parseArgs({
    options: {
      config: { type: 'string' },
      'hub-id': { type: 'string' },
      'tunnel-host': { type: 'string' },
      'tunnel-port': { type: 'string' },
      'app-host': { type: 'string' },
      'app-port': { type: 'string' },
      ca: { type: 'string' },
      cert: { type: 'string' },
      key: { type: 'string' },
      'dev-pki': { type: 'string' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  const fromFile = values.config ? readConfigFile(values.config) : {};
  const tlsFlags = values.ca || values.cert || values.key ? { tls: { ca: values.ca, cert: values.cert, key: values.key } } : {};
  const config = validateConfig(
    hubConfigSchema,
    [
      fromFile,
      {
        hubId: values['hub-id'],
        tunnel: { host: values['tunnel-host'], port: numberFlag(values['tunnel-port']) },
        app: { host: values['app-host'], port: numberFlag(values['app-port']) },
        ...tlsFlags,
        devPki: values['dev-pki'],
        logLevel: values['log-level'],
      },
    ],
    'cloud-hub',
  );
  const hub = await startHub(config);
  onShutdown(() => hub.close());
});
