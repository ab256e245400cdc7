import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { readConfigFile } from '../shared/config-loader.js';
import { parseDuration } from '../shared/duration.js';
import { EdgemuxError } from '../shared/errors.js';
import { certificateFingerprint, ensureDevPki } from '../shared/pki.js';
import { readPem } from '../shared/cli-support.js';
import { PkiStore } from './pki-store.js';

export const PKI_HELP = `cloud-hub pki: the CA, enrollment tokens and revocations of agents

Usage:
  cloud-hub pki init   --dir DIR [--hostname NAME ...]   create the CA (key 0600), the hub certificate
                                                         for NAMEs (default localhost, 127.0.0.1, hub) and the store
  cloud-hub pki token  --dir DIR --agent ID [--ttl 1h]   print a one-time enrollment token for agent ID
                                                         and the CA fingerprint the agent pins
  cloud-hub pki list   --dir DIR                         tokens, issued certificates and revocations
  cloud-hub pki revoke AGENT --dir DIR [--reason TEXT]   revoke every certificate AGENT holds; a running
                                                         hub with --pki-dir DIR closes its tunnels within a second
Options:
  --dir DIR         the PKI directory (or --config hub.yaml naming pkiDir)
  --json            machine-readable output
  -h, --help`;

const AGENT_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const DEFAULT_TOKEN_TTL = '1h';

/** Runs `cloud-hub pki <command> ...`; output goes to stdout, one JSON object with --json. */
export async function runPkiCommand(argv: string[], out: (text: string) => void): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      dir: { type: 'string' },
      config: { type: 'string' },
      hostname: { type: 'string', multiple: true },
      agent: { type: 'string' },
      ttl: { type: 'string' },
      reason: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals: true,
    strict: true,
  });
  const [command, ...rest] = positionals;
  if (values.help || command === undefined) {
    out(PKI_HELP);
    return;
  }
  const dir = pkiDirOf(values.dir, values.config);
  const print = (json: object, text: string): void => out(values.json ? JSON.stringify(json) : text);

  if (command === 'init') {
    const pki = await ensureDevPki(dir, { agentIds: [], ...(values.hostname ? { hubHostnames: values.hostname } : {}) });
    PkiStore.inDir(dir).close();
    const fingerprint = certificateFingerprint(pki.ca);
    print({ dir: pki.dir, caFingerprint: fingerprint }, `PKI ready in ${pki.dir}\nca-fingerprint: ${fingerprint}\nstart the hub with --pki-dir ${pki.dir}`);
    return;
  }
  const store = openStore(dir);
  try {
    if (command === 'token') {
      const agentId = values.agent;
      if (agentId === undefined || !AGENT_ID_PATTERN.test(agentId)) {
        throw new EdgemuxError('E_CONFIG', `--agent: expected an agent id of letters, digits, dot, dash, underscore (got ${JSON.stringify(agentId ?? '')})`);
      }
      const ttlMs = parseDuration(values.ttl ?? DEFAULT_TOKEN_TTL, '--ttl');
      const issued = store.createToken(agentId, ttlMs);
      const fingerprint = certificateFingerprint(readPem(join(dir, 'ca.pem'), '--dir'));
      const expiresAt = new Date(issued.expiresAt).toISOString();
      print(
        { token: issued.token, tokenId: issued.id, agentId, expiresAt, caFingerprint: fingerprint },
        [
          `token: ${issued.token}`,
          `ca-fingerprint: ${fingerprint}`,
          `agent ${agentId}, usable once, until ${expiresAt}; on the agent:`,
          `  edge-agent enroll --hub HUB:PORT --token ${issued.token} --ca-fingerprint ${fingerprint} --dir /var/lib/edgemux/identity`,
        ].join('\n'),
      );
      return;
    }
    if (command === 'list') {
      const listed = store.list();
      const now = Date.now();
      const lines = [
        'tokens:',
        ...listed.tokens.map(
          (t) => `  ${t.id}  ${t.agent_id}  ${t.used_at !== null ? `used ${iso(t.used_at)}` : t.expires_at <= now ? `expired ${iso(t.expires_at)}` : `valid until ${iso(t.expires_at)}`}`,
        ),
        'certificates:',
        ...listed.certificates.map((c) => `  ${c.serial}  ${c.agent_id}  ${c.via}  issued ${iso(c.issued_at)}  expires ${iso(c.not_after)}  ${store.revocationOf(c.agent_id, c.serial) !== null ? 'REVOKED' : ''}`.trimEnd()),
        'revocations:',
        ...listed.revocations.map((r) => `  ${r.agent_id}  ${iso(r.revoked_at)}  ${r.reason}`),
      ];
      print(listed, lines.join('\n'));
      return;
    }
    if (command === 'revoke') {
      const agentId = rest[0] ?? values.agent;
      if (agentId === undefined || !AGENT_ID_PATTERN.test(agentId)) throw new EdgemuxError('E_CONFIG', 'revoke: name the agent to revoke');
      const revocation = store.revokeAgent(agentId, values.reason ?? 'revoked by operator');
      print(revocation, `agent ${agentId} revoked at ${iso(revocation.revoked_at)}; hubs using ${dir} close its tunnels within their poll interval`);
      return;
    }
    throw new EdgemuxError('E_CONFIG', `unknown pki command ${JSON.stringify(command)}; expected init, token, list or revoke`);
  } finally {
    store.close();
  }
}

function pkiDirOf(dir: string | undefined, config: string | undefined): string {
  if (dir !== undefined) return resolve(dir);
  const fromConfig = config !== undefined ? readConfigFile(config).pkiDir : undefined;
  if (typeof fromConfig === 'string') return resolve(fromConfig);
  throw new EdgemuxError('E_CONFIG', '--dir: name the PKI directory (or --config with pkiDir)');
}

function openStore(dir: string): PkiStore {
  if (!existsSync(join(dir, 'ca.pem'))) throw new EdgemuxError('E_CONFIG', `--dir: ${dir} holds no CA; run cloud-hub pki init --dir ${dir} first`);
  return PkiStore.inDir(dir);
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
