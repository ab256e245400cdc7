import { isDeepStrictEqual } from 'node:util';
import type { Logger } from '../shared/logger.js';
import { checkTlsMaterial, diffSettings, logReload } from '../shared/reload.js';
import type { EdgeAgent } from './agent.js';
import type { AgentConfig } from './config.js';
import { agentTlsMaterial, hubAddresses, serverNameOf } from './main.js';

/**
 * Settings a running agent takes over on reload. The others (agent id,
 * device listener, tunnel count, workers, stream and timer tuning, metrics)
 * are bound to sockets and streams already open and need a restart.
 */
export const AGENT_RELOADABLE = ['logLevel', 'tls', 'devPki', 'hubs'] as const;

/** The configuration in effect, with the TLS material read from the files it names. */
export interface RunningAgent {
  config: AgentConfig;
  tls: { ca: string; cert: string; key: string };
}

export async function runningAgent(config: AgentConfig): Promise<RunningAgent> {
  return { config, tls: await agentTlsMaterial(config) };
}

/**
 * Applies what can change without a restart and returns the configuration now
 * in effect. New TLS material and hubs are used by the next tunnel dialled;
 * tunnels up, and the devices on them, are left alone. Everything is read and
 * checked first, so a bad file throws (naming its key) and changes nothing.
 */
export async function reloadAgent(agent: EdgeAgent, running: RunningAgent, next: AgentConfig, log: Logger): Promise<RunningAgent> {
  const diff = diffSettings(running.config, next, AGENT_RELOADABLE);
  const tls = await agentTlsMaterial(next);
  const tlsChanged = !isDeepStrictEqual(tls, running.tls) || serverNameOf(next) !== serverNameOf(running.config);
  if (tlsChanged) checkTlsMaterial(tls, next.tls !== undefined ? 'tls' : next.identity !== undefined ? 'identity.dir' : 'devPki');
  const hubs = isDeepStrictEqual(next.hubs, running.config.hubs) ? null : hubAddresses(next);

  if (tlsChanged) agent.pool.useTls(tls, serverNameOf(next));
  if (hubs !== null) agent.pool.useHubs(hubs);
  log.level = next.logLevel;

  const changed = new Set(diff.changed);
  if (tlsChanged) changed.add('tls');
  logReload(log, { changed: [...changed], needsRestart: diff.needsRestart });
  const config: AgentConfig = { ...running.config };
  for (const key of AGENT_RELOADABLE) Object.assign(config, { [key]: next[key] });
  return { config, tls };
}
