/**
 * The agent's side of enrollment and renewal: its key is made here and never
 * leaves the box; the hub only ever sees a certificate request. The identity
 * directory holds `ca.pem` (the hub CA, pinned by fingerprint at enrollment),
 * `agent.pem` and `agent-key.pem` (0600).
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { existsSync, readFileSync, renameSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import tls from 'node:tls';
import {
  ENROLL_ALPN,
  encodeEnrollMessage,
  type EnrollRequest,
  type EnrollResponse,
  parseEnrollResponse,
  readEnrollMessage,
} from '../shared/enrollment-wire.js';
import { EdgemuxError } from '../shared/errors.js';
import { certificateFingerprint, createCertificateRequest, generatePrivateKeyPem, type TlsMaterial } from '../shared/pki.js';
import { certificateProblemOf, describeCertificateProblem } from '../shared/tls-failure.js';
import type { HubAddress } from './tunnel-pool.js';

export const IDENTITY_FILES = { ca: 'ca.pem', cert: 'agent.pem', key: 'agent-key.pem' } as const;
const DIR_MODE = 0o700;
const KEY_MODE = 0o600;
const CERT_MODE = 0o644;
/** Covers the TCP connect and TLS handshake; the request itself has its own bound. */
const CONNECT_TIMEOUT_MS = 10_000;

/** The hub refused: `refusal` is its code (token-used, token-expired, token-invalid, revoked, ...). */
export class EnrollmentRefusedByHub extends EdgemuxError {
  constructor(
    readonly refusal: string,
    message: string,
  ) {
    super('E_ENROLL_REFUSED', message);
    this.name = 'EnrollmentRefusedByHub';
  }
}

export interface Identity extends TlsMaterial {
  agentId: string;
  serial: string;
  notBefore: number;
  notAfter: number;
}

export interface EnrollOptions {
  hub: HubAddress;
  token: string;
  /** SHA-256 of the hub CA certificate, hex, colons allowed: the one thing the agent trusts before it has the CA. */
  caFingerprint: string;
  dir: string;
  serverName?: string;
}

/**
 * Enrolls: fetches the hub CA and checks it against the fingerprint, then,
 * over TLS verified against that CA, sends the token and a request for a
 * locally made key. The token never goes to a hub that has not proved itself.
 */
export async function enroll(options: EnrollOptions): Promise<Identity> {
  const expected = options.caFingerprint.replaceAll(':', '').toLowerCase();
  const first = await exchange(options.hub, { rejectUnauthorized: false, servername: serverNameFor(options.hub, options.serverName) }, { kind: 'ca' });
  const ca = okResponse(first).ca;
  const actual = certificateFingerprint(ca);
  if (actual !== expected) {
    throw new EnrollmentRefusedByHub('ca-mismatch', `hub CA fingerprint ${actual} is not the expected ${expected}; not sending the token`);
  }
  const key = generatePrivateKeyPem();
  // The name in the request is a placeholder: the hub names the certificate after the agent the token was made for.
  const csr = createCertificateRequest(key, 'enrollment');
  const answer = okResponse(
    await exchange(options.hub, { ca, servername: serverNameFor(options.hub, options.serverName) }, { kind: 'enroll', token: options.token, csr }),
  );
  if (answer.cert === undefined) throw new EdgemuxError('E_ENROLL_TRANSPORT', 'hub answered enrollment without a certificate');
  await saveIdentity(options.dir, { ca, cert: answer.cert, key });
  return identityFrom({ ca, cert: answer.cert, key });
}

/** A new certificate (and key) for the identity `current` proves, over mutual TLS with it. */
export async function renew(hub: HubAddress, current: TlsMaterial, serverName?: string): Promise<TlsMaterial> {
  const key = generatePrivateKeyPem();
  const csr = createCertificateRequest(key, identityFrom(current).agentId);
  const answer = okResponse(
    await exchange(hub, { ca: current.ca, cert: current.cert, key: current.key, servername: serverNameFor(hub, serverName) }, { kind: 'renew', csr }),
  );
  if (answer.cert === undefined) throw new EdgemuxError('E_ENROLL_TRANSPORT', 'hub answered renewal without a certificate');
  return { ca: answer.ca, cert: answer.cert, key };
}

/** The identity in `dir`, finishing a rotation a crash interrupted; null when the agent has not enrolled. */
export function loadIdentity(dir: string): Identity | null {
  completePendingRotation(dir);
  const path = (name: string): string => join(dir, name);
  if (!existsSync(path(IDENTITY_FILES.cert))) return null;
  const material = {
    ca: readFileSync(path(IDENTITY_FILES.ca), 'utf8'),
    cert: readFileSync(path(IDENTITY_FILES.cert), 'utf8'),
    key: readFileSync(path(IDENTITY_FILES.key), 'utf8'),
  };
  const identity = identityFrom(material);
  if (!new X509Certificate(material.cert).checkPrivateKey(createPrivateKey(material.key))) {
    throw new EdgemuxError('E_CONFIG', `identity: ${path(IDENTITY_FILES.key)} does not match ${path(IDENTITY_FILES.cert)}`);
  }
  return identity;
}

/**
 * Writes the identity so that a crash at any point leaves either the old
 * pair or the new one: both new files are written in full first (key 0600),
 * then renamed key first; `loadIdentity` completes renames a crash cut short.
 */
export async function saveIdentity(dir: string, material: TlsMaterial): Promise<void> {
  await mkdir(dir, { recursive: true, mode: DIR_MODE });
  await rm(pending(dir, IDENTITY_FILES.key), { force: true });
  await rm(pending(dir, IDENTITY_FILES.cert), { force: true });
  await writeFile(join(dir, `.${IDENTITY_FILES.ca}.tmp`), material.ca, { mode: CERT_MODE, flush: true });
  await rename(join(dir, `.${IDENTITY_FILES.ca}.tmp`), join(dir, IDENTITY_FILES.ca));
  await writeFile(pending(dir, IDENTITY_FILES.key), material.key, { mode: KEY_MODE, flag: 'wx', flush: true });
  await writeFile(pending(dir, IDENTITY_FILES.cert), material.cert, { mode: CERT_MODE, flag: 'wx', flush: true });
  await rename(pending(dir, IDENTITY_FILES.key), join(dir, IDENTITY_FILES.key));
  await rename(pending(dir, IDENTITY_FILES.cert), join(dir, IDENTITY_FILES.cert));
}

export function identityFrom(material: TlsMaterial): Identity {
  const x509 = new X509Certificate(material.cert);
  const agentId = /^CN=(.*)$/m.exec(x509.subject)?.[1];
  if (agentId === undefined || agentId.length === 0) throw new EdgemuxError('E_CONFIG', 'identity: the agent certificate has no common name');
  return {
    ...material,
    agentId,
    serial: x509.serialNumber.toLowerCase().replace(/^0+(?=.)/, ''),
    notBefore: Date.parse(x509.validFrom),
    notAfter: Date.parse(x509.validTo),
  };
}

function pending(dir: string, name: string): string {
  return join(dir, `.${name}.next`);
}

function completePendingRotation(dir: string): void {
  const cert = pending(dir, IDENTITY_FILES.cert);
  if (!existsSync(cert)) return;
  // Both pending files were complete before the first rename, so finishing is always right.
  const key = pending(dir, IDENTITY_FILES.key);
  if (existsSync(key)) renameSync(key, join(dir, IDENTITY_FILES.key));
  renameSync(cert, join(dir, IDENTITY_FILES.cert));
}

function okResponse(response: EnrollResponse): Extract<EnrollResponse, { ok: true }> {
  if (!response.ok) throw new EnrollmentRefusedByHub(response.code, `hub refused: ${response.code}: ${response.reason}`);
  return response;
}

function serverNameFor(hub: HubAddress, serverName: string | undefined): string | undefined {
  return serverName ?? (/^[\d.]+$/.test(hub.host) || hub.host.includes(':') ? undefined : hub.host);
}

/** One request and its response over a fresh TLS connection offering the enrollment ALPN protocol. */
async function exchange(hub: HubAddress, options: tls.ConnectionOptions, request: EnrollRequest): Promise<EnrollResponse> {
  const socket = tls.connect({ host: hub.host, port: hub.port, minVersion: 'TLSv1.3', ALPNProtocols: [ENROLL_ALPN], ...options });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new EdgemuxError('E_ENROLL_TRANSPORT', `no TLS connection to ${hub.host}:${hub.port} within ${CONNECT_TIMEOUT_MS} ms`)), CONNECT_TIMEOUT_MS);
      socket.once('secureConnect', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        const problem = certificateProblemOf(err.code);
        const what = problem !== null ? `hub certificate refused: ${describeCertificateProblem(problem)} (${err.message})` : err.message;
        reject(new EdgemuxError('E_ENROLL_TRANSPORT', `${hub.host}:${hub.port}: ${what}`, { cause: err }));
      });
    });
    if (socket.alpnProtocol !== ENROLL_ALPN) {
      throw new EdgemuxError('E_ENROLL_TRANSPORT', `${hub.host}:${hub.port} does not take enrollments (no ${ENROLL_ALPN})`);
    }
    const response = readEnrollMessage(socket);
    socket.write(encodeEnrollMessage(request));
    return parseEnrollResponse(await response);
  } finally {
    socket.destroy();
  }
}
