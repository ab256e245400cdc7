import { join } from 'node:path';
import { readPem } from '../shared/cli-support.js';
import { parseDuration } from '../shared/duration.js';
import { createLogger } from '../shared/logger.js';
import { ensureDevPki } from '../shared/pki.js';
import type { Logger } from '../shared/logger.js';
import type { HubConfig, RouteConfig } from './config.js';
import { AclFile } from './acl-file.js';
import { type ExternalBrokerEndpoint, ExternalBrokerGroup } from './external-broker.js';
import { CloudHub, type HubOptions } from './hub.js';
import { PasswordFile } from './password-file.js';
import { PkiStore } from './pki-store.js';
import type { Route } from './routes.js';

/** Starts a hub from validated configuration. */
export async function startHub(config: HubConfig, log: Logger = createLogger('cloud-hub', config.logLevel)): Promise<CloudHub> {
  const tls = await hubTlsMaterial(config);
  const appPasswords = config.app.passwordFile === undefined ? null : PasswordFile.read(config.app.passwordFile, 'app.passwordFile');
  const pki = hubPki(config);
  return CloudHub.start({
    pki,
    hubId: config.hubId,
    tunnelHost: config.tunnel.host,
    tunnelPort: config.tunnel.port,
    handshakeTimeoutMs: config.tunnel.handshakeTimeoutMs,
    maxUnauthenticated: config.tunnel.maxUnauthenticated,
    webSocketPath: config.tunnel.webSocketPath === false ? null : config.tunnel.webSocketPath,
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
    acl: readAcl(config),
    registryExpireAfterMs: config.registry.expireAfterDays * 24 * 3600 * 1000,
    namespaces: config.namespaces,
    statePath: config.statePath,
    routes: config.routes.map((route, index) => resolveRoute(route, index, log)),
    log,
  });
}

/** The ACL file `acl.file` names, checked line by line; null (everything allowed) without one. */
export function readAcl(config: HubConfig): AclFile | null {
  return config.acl.file === undefined ? null : AclFile.read(config.acl.file, 'acl.file');
}

/** The hub's certificate, key and agent CA, read from the files `tls` names, the PKI directory or the development PKI. */
export async function hubTlsMaterial(config: HubConfig): Promise<{ ca: string; cert: string; key: string }> {
  if (config.tls) {
    return { ca: readPem(config.tls.ca, 'tls.ca'), cert: readPem(config.tls.cert, 'tls.cert'), key: readPem(config.tls.key, 'tls.key') };
  }
  if (config.pkiDir !== undefined) {
    const file = (name: string): string => readPem(join(config.pkiDir!, name), 'pkiDir');
    return { ca: file('ca.pem'), cert: file('hub.pem'), key: file('hub-key.pem') };
  }
  return await devPkiMaterial(config.devPki!);
}

/** Enrollment and revocation from the PKI directory, when there is one. */
function hubPki(config: HubConfig): HubOptions['pki'] {
  if (config.pkiDir === undefined) return undefined;
  const ca = { certPem: readPem(join(config.pkiDir, 'ca.pem'), 'pkiDir'), keyPem: readPem(join(config.pkiDir, 'ca-key.pem'), 'pkiDir') };
  return {
    store: PkiStore.inDir(config.pkiDir),
    ca,
    certValidityMs: parseDuration(config.enrollment.certValidity, 'enrollment.certValidity'),
    revocationPollMs: config.enrollment.revocationPollMs,
  };
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
