import { parseArgs } from 'node:util';
import { parseHostPort } from '../shared/config-loader.js';
import { EdgemuxError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import type { TlsMaterial } from '../shared/pki.js';
import type { AgentConfig } from './config.js';
import { enroll, EnrollmentRefusedByHub, loadIdentity } from './enrollment.js';
import { hubAddresses, serverNameOf } from './main.js';
import { CertificateRenewal } from './renewal.js';

export const ENROLL_HELP = `edge-agent enroll: get this agent's certificate from a hub with a one-time token

Usage: edge-agent enroll --hub HOST:PORT --token TOKEN --ca-fingerprint SHA256 --dir DIR [--server-name NAME]
  --hub HOST:PORT        the hub's tunnel address
  --token TOKEN          from 'cloud-hub pki token' (or EDGEMUX_ENROLL_TOKEN, kept out of the process list)
  --ca-fingerprint HEX   from the same command: the hub CA is trusted only if it matches
  --dir DIR              where the key (made here, 0600), the certificate and the hub CA are written
  --server-name NAME     name the hub certificate must carry (default: the hub host)

Then run: edge-agent --identity-dir DIR --hub HOST:PORT`;

/** Exit status of a refused enrollment: distinct from bad flags (2) and crashes (1). */
const EXIT_REFUSED = 3;

export async function runEnrollCommand(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      hub: { type: 'string' },
      token: { type: 'string' },
      'ca-fingerprint': { type: 'string' },
      dir: { type: 'string' },
      'server-name': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${ENROLL_HELP}\n`);
    return;
  }
  const token = values.token ?? process.env.EDGEMUX_ENROLL_TOKEN;
  if (values.hub === undefined || token === undefined || values['ca-fingerprint'] === undefined || values.dir === undefined) {
    throw new EdgemuxError('E_CONFIG', 'enroll needs --hub, --token (or EDGEMUX_ENROLL_TOKEN), --ca-fingerprint and --dir');
  }
  try {
    const identity = await enroll({
      hub: parseHostPort(values.hub, '--hub'),
      token,
      caFingerprint: values['ca-fingerprint'],
      dir: values.dir,
      serverName: values['server-name'],
    });
    process.stdout.write(
      `enrolled as ${identity.agentId}; certificate ${identity.serial} valid until ${new Date(identity.notAfter).toISOString()}\n` +
        `start with: edge-agent --identity-dir ${values.dir} --hub ${values.hub}\n`,
    );
  } catch (err) {
    if (!(err instanceof EdgemuxError) || err.code === 'E_CONFIG') throw err;
    process.stderr.write(`enrollment failed: ${err.message}\n`);
    process.exit(EXIT_REFUSED);
  }
}

/** At start-up: enrolls through the first hub when an identity directory is configured but still empty. */
export async function enrollIfNeeded(config: AgentConfig, token: string | undefined, caFingerprint: string | undefined, log: Logger): Promise<void> {
  if (config.identity === undefined || token === undefined) return;
  if (loadIdentity(config.identity.dir) !== null) {
    log.info({ dir: config.identity.dir }, 'already enrolled; enrollment token not used');
    return;
  }
  if (caFingerprint === undefined) throw new EdgemuxError('E_CONFIG', '--ca-fingerprint: needed with --enroll-token, to trust the hub before sending the token');
  try {
    const identity = await enroll({ hub: hubAddresses(config)[0], token, caFingerprint, dir: config.identity.dir, serverName: serverNameOf(config) });
    log.info({ agentId: identity.agentId, serial: identity.serial, notAfter: new Date(identity.notAfter).toISOString() }, 'agent enrolled');
  } catch (err) {
    if (err instanceof EnrollmentRefusedByHub) {
      log.error({ code: err.refusal, reason: err.message }, 'enrollment refused');
      process.exit(EXIT_REFUSED);
    }
    throw err;
  }
}

/** Keeps an enrolled identity's certificate fresh; null when the agent has none. */
export function startRenewal(config: AgentConfig, log: Logger, onRenewed: (material: TlsMaterial) => void): CertificateRenewal | null {
  if (config.identity === undefined) return null;
  const identity = loadIdentity(config.identity.dir);
  if (identity === null) return null;
  const renewal = new CertificateRenewal({
    dir: config.identity.dir,
    identity,
    hubs: () => hubAddresses(config),
    serverName: serverNameOf(config),
    renewAt: config.identity.renewAt,
    onRenewed: ({ ca, cert, key }) => onRenewed({ ca, cert, key }),
    log,
  });
  renewal.start();
  log.info({ agentId: identity.agentId, notAfter: new Date(identity.notAfter).toISOString(), renewAt: new Date(renewal.dueAt).toISOString() }, 'certificate renewal scheduled');
  return renewal;
}
