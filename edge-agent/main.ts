import { readPem } from '../shared/cli-support.js';
import { parseHostPort } from '../shared/config-loader.js';
import { createLogger, type Logger } from '../shared/logger.js';
import { ensureDevPki } from '../shared/pki.js';
import { EdgemuxError } from '../shared/errors.js';
import { EdgeAgent } from './agent.js';
import { type Identity, loadIdentity } from './enrollment.js';
import { type AgentConfig, DEFAULT_LISTEN, deviceListeners, type ListenerConfig } from './config.js';
import type { DeviceListenerOptions } from './device-listeners.js';
import type { HubAddress } from './tunnel-pool.js';

/** Starts an agent from validated configuration. */
export async function startAgent(
  config: AgentConfig,
  worker = 0,
  log: Logger = createLogger('edge-agent', config.logLevel).child({ worker }),
): Promise<EdgeAgent> {
  const tls = await agentTlsMaterial(config);
  return EdgeAgent.start({
    // An enrolled agent is whoever its certificate names; the hub goes by that name anyway.
    agentId: config.identity !== undefined ? enrolledIdentity(config.identity.dir).agentId : config.agentId,
    worker,
    deviceHost: config.listen.host ?? DEFAULT_LISTEN.host,
    devicePort: config.listen.port ?? DEFAULT_LISTEN.port,
    deviceBacklog: config.listen.backlog,
    listeners: deviceListeners(config).map(listenerOptions),
    connectsPerSecondPerAddress: config.listen.connectsPerSecondPerAddress,
    hubs: hubAddresses(config),
    tunnels: config.tunnels,
    tls,
    serverName: serverNameOf(config),
    streamWindow: config.streamWindow,
    maxPacketSize: config.maxPacketSize,
    connectTimeoutMs: config.connectTimeoutMs,
    maxClientIdLength: config.maxClientIdLength,
    heartbeatMs: config.heartbeatMs,
    deadAfterMs: config.deadAfterMs,
    resumeGraceMs: config.resumeGraceMs,
    backoffInitialMs: config.backoffInitialMs,
    backoffMaxMs: config.backoffMaxMs,
    reconnectProbeMs: config.reconnectProbeMs,
    log,
  });
}

export function serverNameOf(config: AgentConfig): string | undefined {
  return config.tls?.serverName ?? config.identity?.serverName;
}

/** A configured listener with its PEM files read, each failure naming its key. */
function listenerOptions(listener: ListenerConfig, index: number): DeviceListenerOptions {
  if (listener.type === 'tcp' || listener.type === 'ws') return listener;
  const { cert, key, ca, ...rest } = listener;
  const at = `listeners[${index}]`;
  return {
    ...rest,
    tls: {
      cert: readPem(cert, `${at}.cert`),
      key: readPem(key, `${at}.key`),
      ca: ca === undefined ? undefined : readPem(ca, `${at}.ca`),
    },
  };
}

export function hubAddresses(config: AgentConfig): HubAddress[] {
  return config.hubs.map((hub, index) => parseHostPort(hub, `hubs[${index}]`));
}

/** This agent's certificate, key and the hub CA, read from the files `tls` names or from the development PKI. */
export async function agentTlsMaterial(config: AgentConfig): Promise<{ ca: string; cert: string; key: string }> {
  if (config.tls) return { ca: readPem(config.tls.ca, 'tls.ca'), cert: readPem(config.tls.cert, 'tls.cert'), key: readPem(config.tls.key, 'tls.key') };
  if (config.identity !== undefined) {
    const { ca, cert, key } = enrolledIdentity(config.identity.dir);
    return { ca, cert, key };
  }
  return await devPkiMaterial(config.devPki!, config.agentId);
}

export function enrolledIdentity(dir: string): Identity {
  const identity = loadIdentity(dir);
  if (identity === null) {
    throw new EdgemuxError('E_CONFIG', `identity.dir: no agent certificate in ${dir}; enroll first (edge-agent enroll, or --enroll-token with --ca-fingerprint)`);
  }
  return identity;
}

async function devPkiMaterial(dir: string, agentId: string): Promise<{ ca: string; cert: string; key: string }> {
  const pki = await ensureDevPki(dir, { agentIds: [agentId] });
  const own = pki.agents[agentId];
  return { ca: pki.ca, cert: own.cert, key: own.key };
}
