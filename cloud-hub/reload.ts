import { createHash } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import { readPem } from '../shared/cli-support.js';
import type { Logger } from '../shared/logger.js';
import { checkTlsMaterial, diffSettings, logReload, type SettingsDiff } from '../shared/reload.js';
import type { HubConfig, RouteConfig } from './config.js';
import type { CloudHub, HubOptions } from './hub.js';
import { hubTlsMaterial, readAcl, resolveRoute } from './main.js';

/**
 * Settings a running hub takes over on reload. The others (listeners, hub id,
 * state file, tunnel and queue tuning, metrics) are bound to sockets, files
 * or sessions already open and need a restart.
 */
export const HUB_RELOADABLE = ['routes', 'namespaces', 'logLevel', 'tls', 'devPki', 'acl'] as const;

/** The configuration in effect, with what was read from the files it names. */
export interface RunningHub {
  config: HubConfig;
  tls: HubOptions['tls'];
  /** Digest of the routes and of the broker PEM files they name: a rotated broker certificate counts as a change. */
  routesDigest: string;
  /** What the reload that produced this configuration changed, and what waits for a restart. */
  applied: SettingsDiff;
}

export async function runningHub(config: HubConfig): Promise<RunningHub> {
  return { config, tls: await hubTlsMaterial(config), routesDigest: routesDigest(config.routes), applied: { changed: [], needsRestart: [] } };
}

/**
 * Applies what can change without a restart and returns the configuration now
 * in effect. Everything is read and checked before anything is swapped, so a
 * bad file throws (naming its key) and leaves the hub as it was.
 */
export async function reloadHub(hub: CloudHub, running: RunningHub, next: HubConfig, log: Logger): Promise<RunningHub> {
  const diff = diffSettings(running.config, next, HUB_RELOADABLE);
  const tls = await hubTlsMaterial(next);
  const tlsChanged = !isDeepStrictEqual(tls, running.tls);
  if (tlsChanged) checkTlsMaterial(tls, next.tls !== undefined ? 'tls' : next.pkiDir !== undefined ? 'pkiDir' : 'devPki');
  const digest = routesDigest(next.routes);
  const routes = digest === running.routesDigest ? null : next.routes.map((route, index) => resolveRoute(route, index, log));
  // Read on every reload, changed path or not: editing the file in place is the usual way to change it.
  const acl = readAcl(next);

  if (tlsChanged) hub.replaceTls(tls);
  if (routes !== null) hub.replaceRoutes(routes);
  if (!isDeepStrictEqual(next.namespaces, running.config.namespaces)) hub.replaceNamespaces(next.namespaces);
  if (acl !== null || running.config.acl.file !== undefined) hub.replaceAcl(acl);
  log.level = next.logLevel;

  const changed = new Set(diff.changed);
  if (tlsChanged) changed.add('tls');
  if (routes !== null) changed.add('routes');
  if (acl !== null) changed.add('acl');
  const applied = { changed: [...changed], needsRestart: diff.needsRestart };
  logReload(log, applied);
  const config: HubConfig = { ...running.config };
  for (const key of HUB_RELOADABLE) Object.assign(config, { [key]: next[key] });
  return { config, tls, routesDigest: digest, applied };
}

function routesDigest(routes: RouteConfig[]): string {
  const hash = createHash('sha256').update(JSON.stringify(routes));
  routes.forEach((route, index) => {
    if (route.backend === 'embedded') return;
    route.backend.brokers.forEach((broker, brokerIndex) => {
      const key = `routes[${index}].backend.brokers[${brokerIndex}]`;
      for (const file of ['ca', 'cert', 'key'] as const) {
        const path = broker[file];
        if (path !== undefined) hash.update(readPem(path, `${key}.${file}`));
      }
    });
  });
  return hash.digest('hex');
}
