import { readPem } from '../shared/cli-support.js';
import { parseHostPort } from '../shared/config-loader.js';
import { createLogger } from '../shared/logger.js';
import { ensureDevPki } from '../shared/pki.js';
import { EdgeAgent } from './agent.js';
import type { AgentConfig } from './config.js';

/** Starts an agent from validated configuration. */
export async function startAgent(config: AgentConfig, worker = 0): Promise<EdgeAgent> {
  const tls = config.tls
    ? { ca: readPem(config.tls.ca, 'tls.ca'), cert: readPem(config.tls.cert, 'tls.cert'), key: readPem(config.tls.key, 'tls.key') }
    : await devPkiMaterial(config.devPki!, config.agentId);
  return EdgeAgent.start({
    agentId: config.agentId,
    worker,
    deviceHost: config.listen.host,
    devicePort: config.listen.port,
    deviceBacklog: config.listen.backlog,
    hubs: config.hubs.map((hub, index) => parseHostPort(hub, `hubs[${index}]`)),
    tunnels: config.tunnels,
    tls,
    serverName: config.tls?.serverName,
    streamWindow: config.streamWindow,
    maxPacketSize: config.maxPacketSize,
    connectTimeoutMs: config.connectTimeoutMs,
    heartbeatMs: config.heartbeatMs,
    deadAfterMs: config.deadAfterMs,
    resumeGraceMs: config.resumeGraceMs,
    backoffInitialMs: config.backoffInitialMs,
    backoffMaxMs: config.backoffMaxMs,
    reconnectProbeMs: config.reconnectProbeMs,
    log: createLogger('edge-agent', config.logLevel).child({ worker }),
  });
}

async function devPkiMaterial(dir: string, agentId: string): Promise<{ ca: string; cert: string; key: string }> {
  const pki = await ensureDevPki(dir, { agentIds: [agentId] });
  const own = pki.agents[agentId];
  return { ca: pki.ca, cert: own.cert, key: own.key };
}
