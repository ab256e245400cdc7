import { readPem } from '../shared/cli-support.js';
import { createLogger } from '../shared/logger.js';
import { ensureDevPki } from '../shared/pki.js';
import type { Logger } from '../shared/logger.js';
import type { HubConfig, RouteConfig } from './config.js';
import { type ExternalBrokerEndpoint, ExternalBrokerGroup } from './external-broker.js';
import { CloudHub } from './hub.js';
import { PasswordFile } from './password-file.js';
import type { Route } from './routes.js';

/** Starts a hub from validated configuration. */
export async function startHub(config: HubConfig, log: Logger = createLogger('cloud-hub', config.logLevel)): Promise<CloudHub> {
  const tls = await hubTlsMaterial(config);
  const appPasswords = config.app.passwordFile === undefined ? null : PasswordFile.read(config.app.passwordFile, 'app.passwordFile');
  return CloudHub.start({
    hubId: config.hubId,
    tunnelHost: config.tunnel.host,
    tunnelPort: config.tunnel.port,
    handshakeTimeoutMs: config.tunnel.handshakeTimeoutMs,
    maxUnauthenticated: config.tunnel.maxUnauthenticated,
    appHost: config.app.host,
    appPort: config.app.port,
    appPasswords,
    appAllowAnonymous: config.app.allowAnonymous,
    appMaxPacketSize: config.app.maxPacketSize,
    tls,
    streamWindow: config.streamWindow,
    maxPacketSize: config.maxPacketSize,
    heartbeatMs: config.heartbeatMs,
    deadAfterMs: config.deadAfterMs,
    resumeGraceMs: config.resumeGraceMs,
    maxQueuedBytes: config.maxQueuedBytes,
    offlineQueue: config.offlineQueue,
    maxClientIdLength: config.maxClientIdLength,
    maxDevicesPerAgent: config.maxDevicesPerAgent,
    subscriptionLimits: config.subscriptions,
    registryExpireAfterMs: config.registry.expireAfterDays * 24 * 3600 * 1000,
    namespaces: config.namespaces,
    statePath: config.statePath,
    routes: config.routes.map((route, index) => resolveRoute(route, index, log)),
    log,
  });
}

/** The hub's certificate, key and agent CA, read from the files `tls` names or from the development PKI. */
export async function hubTlsMaterial(config: HubConfig): Promise<{ ca: string; cert: string; key: string }> {
  return config.tls
    ? { ca: readPem(config.tls.ca, 'tls.ca'), cert: readPem(config.tls.cert, 'tls.cert'), key: readPem(config.tls.key, 'tls.key') }
    : await devPkiMaterial(config.devPki!);
}

async function devPkiMaterial(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const pki = await ensureDevPki(dir);
  return { ca: pki.ca, cert: pki.hub.cert, key: pki.hub.key };
}

/** Turns a configured route into live backends, reading its PEM files now so a bad path stops start-up. */
export function resolveRoute(route: RouteConfig, index: number, log: Logger): Route {
  const name = route.name ?? `routes[${index}]`;
  if (route.backend === 'embedded') return { name, match: route.match, backend: { kind: 'embedded' } };
  const endpoints = route.backend.brokers.map((broker, brokerIndex): ExternalBrokerEndpoint => {
    const key = `routes[${index}].backend.brokers[${brokerIndex}]`;
    const url = new URL(broker.url);
    const secure = url.protocol === 'mqtts:';
    return {
      url: broker.url,
      host: url.hostname,
      port: url.port === '' ? (secure ? 8883 : 1883) : Number(url.port),
      tls: secure
        ? {
            ca: broker.ca === undefined ? undefined : readPem(broker.ca, `${key}.ca`),
            cert: broker.cert === undefined ? undefined : readPem(broker.cert, `${key}.cert`),
            key: broker.key === undefined ? undefined : readPem(broker.key, `${key}.key`),
            rejectUnauthorized: broker.rejectUnauthorized,
            servername: broker.serverName,
          }
        : undefined,
    };
  });
  return {
    name,
    match: route.match,
    backend: { kind: 'external', group: new ExternalBrokerGroup(name, endpoints, route.backend.healthCheckMs, log, {
      graceMs: route.backend.reconnectGraceMs,
    }) },
  };
}
