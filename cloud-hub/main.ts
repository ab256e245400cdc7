import { readPem } from '../shared/cli-support.js';
import { createLogger } from '../shared/logger.js';
import { ensureDevPki } from '../shared/pki.js';
import type { HubConfig } from './config.js';
import { CloudHub } from './hub.js';

/** Starts a hub from validated configuration. */
export async function startHub(config: HubConfig): Promise<CloudHub> {
  const tls = config.tls
    ? { ca: readPem(config.tls.ca, 'tls.ca'), cert: readPem(config.tls.cert, 'tls.cert'), key: readPem(config.tls.key, 'tls.key') }
    : await devPkiMaterial(config.devPki!);
  return CloudHub.start({
    hubId: config.hubId,
    tunnelHost: config.tunnel.host,
    tunnelPort: config.tunnel.port,
    appHost: config.app.host,
    appPort: config.app.port,
    tls,
    streamWindow: config.streamWindow,
    maxPacketSize: config.maxPacketSize,
    heartbeatMs: config.heartbeatMs,
    deadAfterMs: config.deadAfterMs,
    resumeGraceMs: config.resumeGraceMs,
    maxQueuedBytes: config.maxQueuedBytes,
    log: createLogger('cloud-hub', config.logLevel),
  });
}

async function devPkiMaterial(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const pki = await ensureDevPki(dir);
  return { ca: pki.ca, cert: pki.hub.cert, key: pki.hub.key };
}
