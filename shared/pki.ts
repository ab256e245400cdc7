/**
 * Development PKI for the mutual-TLS tunnel between edge agents and the hub:
 * one self-signed CA, a server certificate for the hub and a client
 * certificate per agent. Not meant for production key management.
 *
 * Keys come from node:crypto because node-forge's pure-JS RSA keygen takes
 * seconds per 2048-bit key; forge is used only to build and sign the X.509
 * structures, which node:crypto cannot do.
 */
import { X509Certificate, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { link, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { basename, dirname, join, resolve } from 'node:path';
import forge from 'node-forge';
import { EdgemuxError } from './errors.js';

/** PEM strings, shaped to spread into `tls.connect` / `tls.createServer` options. */
export interface TlsMaterial {
  ca: string;
  cert: string;
  key: string;
}

export interface CertificateAndKey {
  certPem: string;
  keyPem: string;
}

export type CertificateRole = 'server' | 'client';

export interface CertificateAuthorityOptions {
  commonName?: string;
  validDays?: number;
}

export interface IssueCertificateOptions {
  commonName: string;
  role: CertificateRole;
  /** DNS names and IP addresses; a server certificate without any gets its commonName. */
  altNames?: string[];
  validDays?: number;
  /** Validity in milliseconds, for short-lived enrolled certificates; takes precedence over validDays. */
  validMs?: number;
}

/** A certificate signed from an agent's request, with what the hub records of it. */
export interface SignedCertificate {
  certPem: string;
  /** Lowercase hex, as in `certificateSerial`. */
  serial: string;
  notAfter: Date;
}

export interface DevPkiOptions {
  agentIds?: string[];
  hubHostnames?: string[];
}

export interface DevPki {
  dir: string;
  /** CA certificate PEM, the trust anchor both sides load. */
  ca: string;
  hub: TlsMaterial;
  /** Material for the requested agent ids only, not every agent found on disk. */
  agents: Record<string, TlsMaterial>;
}

const RSA_MODULUS_BITS = 2048;
const DEFAULT_CA_COMMON_NAME = 'edgemux dev CA';
const DEFAULT_CA_VALID_DAYS = 3650;
const DEFAULT_LEAF_VALID_DAYS = 365;
const HUB_COMMON_NAME = 'edgemux-hub';
const DEFAULT_AGENT_IDS = ['agent-1'];
// 'hub' is the service name the hub has in docker-compose.yml.
const DEFAULT_HUB_HOSTNAMES = ['localhost', '127.0.0.1', 'hub'];
/** Tolerates agents whose clocks run behind the machine that issued the cert. */
const CLOCK_SKEW_MS = 60 * 60 * 1000;
const DAY_MS = 24 * 60 * 60 * 1000;
const SERIAL_BYTES = 16;
const DIR_MODE = 0o700;
const KEY_MODE = 0o600;
const CERT_MODE = 0o644;
/** Agent ids become file names; this keeps them from escaping the PKI directory. */
const AGENT_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

// GeneralName tags from RFC 5280 §4.2.1.6.
const GENERAL_NAME_DNS = 2;
const GENERAL_NAME_IP = 7;

export function createCertificateAuthority(opts: CertificateAuthorityOptions = {}): CertificateAndKey {
  const keyPem = generateKeyPem();
  return { certPem: buildCaCertificate(keyPem, opts), keyPem };
}

export function issueCertificate(ca: CertificateAndKey, opts: IssueCertificateOptions): CertificateAndKey {
  const keyPem = generateKeyPem();
  return { certPem: signLeafCertificate(ca, publicKeyPemOf(keyPem), opts), keyPem };
}

/**
 * A PKCS#10 request for `commonName` signed with the agent's own key, so the
 * key never leaves the agent. node-forge signs it: node:crypto cannot build CSRs.
 */
export function createCertificateRequest(keyPem: string, commonName: string): string {
  checkCommonName(commonName);
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = forge.pki.publicKeyFromPem(publicKeyPemOf(keyPem));
  csr.setSubject([{ shortName: 'CN', value: commonName }]);
  csr.sign(forge.pki.privateKeyFromPem(keyPem), forge.md.sha256.create());
  return forge.pki.certificationRequestToPem(csr);
}

/**
 * Signs a client certificate for `commonName` over the public key of `csrPem`.
 * The name comes from the caller (the hub's record of who the token or the
 * presented certificate belongs to), never from the request's subject: a
 * request proves possession of a key, not an identity.
 */
export function signCertificateRequest(ca: CertificateAndKey, csrPem: string, opts: { commonName: string; validMs: number }): SignedCertificate {
  const certPem = signLeafCertificate(ca, checkCertificateRequest(csrPem), { commonName: opts.commonName, role: 'client', validMs: opts.validMs });
  const x509 = new X509Certificate(certPem);
  return { certPem, serial: certificateSerial(x509), notAfter: new Date(x509.validTo) };
}

/** Checks that a request is well formed, self-signed and carries a key strong enough; returns its public key PEM. */
export function checkCertificateRequest(csrPem: string): string {
  let csr: forge.pki.CertificateSigningRequest;
  try {
    csr = forge.pki.certificationRequestFromPem(csrPem);
  } catch (err) {
    throw new EdgemuxError('E_ENROLL_BAD_REQUEST', 'not a PEM certificate request', { cause: err });
  }
  let verified = false;
  try {
    verified = csr.verify();
  } catch {
    // forge throws on some malformed signatures; either way the request is refused below.
  }
  if (!verified) throw new EdgemuxError('E_ENROLL_BAD_REQUEST', 'certificate request signature does not verify');
  const publicKey = csr.publicKey as forge.pki.rsa.PublicKey | null;
  if (publicKey === null || typeof publicKey.n?.bitLength !== 'function' || publicKey.n.bitLength() < RSA_MODULUS_BITS) {
    throw new EdgemuxError('E_ENROLL_BAD_REQUEST', `certificate request key must be RSA of at least ${RSA_MODULUS_BITS} bits`);
  }
  return forge.pki.publicKeyToPem(publicKey);
}

/** The serial as lowercase hex without leading zeros, the form OpenSSL and node:tls report it in (case aside). */
export function certificateSerial(cert: X509Certificate | string): string {
  const x509 = typeof cert === 'string' ? new X509Certificate(cert) : cert;
  return x509.serialNumber.toLowerCase().replace(/^0+(?=.)/, '');
}

export function generatePrivateKeyPem(): string {
  return generateKeyPem();
}

/** SHA-256 over the DER encoding, lowercase hex without colons, for pinning and logs. */
export function certificateFingerprint(certPem: string): string {
  return new X509Certificate(certPem).fingerprint256.replaceAll(':', '').toLowerCase();
}

/**
 * Loads the dev PKI from `dir`, creating whatever is missing.
 *
 * Every file is published with link(2), which fails if the target exists, so
 * when two processes race the first writer wins and the other adopts its file.
 * A plain rename would let the loser replace a CA key that the winner already
 * signed with, leaving certificates that no longer chain. Keys are published
 * before their certificates, so a crash between the two leaves a key from
 * which the next run derives the certificate.
 */
export async function ensureDevPki(dir: string, opts: DevPkiOptions = {}): Promise<DevPki> {
  const agentIds = opts.agentIds ?? DEFAULT_AGENT_IDS;
  const hubHostnames = opts.hubHostnames ?? DEFAULT_HUB_HOSTNAMES;
  for (const id of agentIds) {
    if (!AGENT_ID_PATTERN.test(id)) {
      throw new EdgemuxError('E_CONFIG', `agentIds: invalid id ${JSON.stringify(id)}, expected ${AGENT_ID_PATTERN}`);
    }
  }
  const root = resolve(dir);
  await mkdir(root, { recursive: true, mode: DIR_MODE });

  const caKeyPath = join(root, 'ca-key.pem');
  const caCertPath = join(root, 'ca.pem');
  const caKeyPem = await publishOnce(caKeyPath, KEY_MODE, generateKeyPem);
  const caCertPem = await publishOnce(caCertPath, CERT_MODE, () => buildCaCertificate(caKeyPem, {}));
  const ca: CertificateAndKey = { certPem: caCertPem, keyPem: caKeyPem };
  const caCert = parseCertificate(caCertPem, caCertPath);
  checkKeyMatches(caCert, caKeyPem, caCertPath, caKeyPath);
  checkNotExpired(caCert, caCertPath);

  const hub = await ensureLeaf(root, 'hub', ca, caCert, {
    commonName: HUB_COMMON_NAME,
    role: 'server',
    altNames: hubHostnames,
  });
  const hubCert = parseCertificate(hub.cert, join(root, 'hub.pem'));
  // Names asked for explicitly must be covered; the defaults grew over time, and an
  // existing development certificate without a newer default name stays usable.
  for (const host of opts.hubHostnames ?? []) {
    const covered = isIP(host) ? hubCert.checkIP(host) : hubCert.checkHost(host);
    if (covered === undefined) {
      throw new EdgemuxError(
        'E_CONFIG',
        `hubHostnames: ${host} is not in ${join(root, 'hub.pem')}; delete hub.pem and hub-key.pem to reissue`,
      );
    }
  }

  const agents: Record<string, TlsMaterial> = {};
  // Sequential on purpose: keygen is synchronous CPU work, so parallelism buys nothing.
  for (const id of agentIds) {
    agents[id] = await ensureLeaf(root, `agent-${id}`, ca, caCert, { commonName: id, role: 'client' });
  }
  return { dir: root, ca: caCertPem, hub, agents };
}

async function ensureLeaf(
  root: string,
  name: string,
  ca: CertificateAndKey,
  caCert: X509Certificate,
  opts: IssueCertificateOptions,
): Promise<TlsMaterial> {
  const keyPath = join(root, `${name}-key.pem`);
  const certPath = join(root, `${name}.pem`);
  const keyPem = await publishOnce(keyPath, KEY_MODE, generateKeyPem);
  const certPem = await publishOnce(certPath, CERT_MODE, () => signLeafCertificate(ca, publicKeyPemOf(keyPem), opts));
  const cert = parseCertificate(certPem, certPath);
  checkKeyMatches(cert, keyPem, certPath, keyPath);
  checkNotExpired(cert, certPath);
  // Catches a CA regenerated under leaves that were kept: the failure would
  // otherwise surface only as an opaque handshake error on the other side.
  if (!cert.checkIssued(caCert) || !cert.verify(caCert.publicKey)) {
    throw new EdgemuxError('E_CONFIG', `${certPath} was not issued by the CA in ${root}; delete it and its key to reissue`);
  }
  return { ca: ca.certPem, cert: certPem, key: keyPem };
}

/**
 * Returns the content of `path`, first creating it from `produce()` if absent.
 * The content is written to a private temp file and hard-linked into place so
 * readers never see a partial file and an existing file is never replaced.
 */
async function publishOnce(path: string, mode: number, produce: () => string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if (!isErrnoCode(err, 'ENOENT')) throw err;
  }
  const content = produce();
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    await writeFile(tmp, content, { mode, flag: 'wx', flush: true });
    await link(tmp, path);
    return content;
  } catch (err) {
    if (isErrnoCode(err, 'EEXIST')) return await readFile(path, 'utf8');
    throw err;
  } finally {
    await rm(tmp, { force: true });
  }
}

function buildCaCertificate(keyPem: string, opts: CertificateAuthorityOptions): string {
  const commonName = opts.commonName ?? DEFAULT_CA_COMMON_NAME;
  const validDays = opts.validDays ?? DEFAULT_CA_VALID_DAYS;
  checkCommonName(commonName);
  checkValidDays(validDays);
  const subject = [{ shortName: 'CN', value: commonName }];
  const cert = newCertificate(publicKeyPemOf(keyPem), validDays);
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    // pathLen 0: this CA signs leaves only, never intermediates.
    { name: 'basicConstraints', cA: true, pathLenConstraint: 0, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(forge.pki.privateKeyFromPem(keyPem), forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}

function signLeafCertificate(ca: CertificateAndKey, publicKeyPem: string, opts: IssueCertificateOptions): string {
  const validMs = opts.validMs ?? (opts.validDays ?? DEFAULT_LEAF_VALID_DAYS) * DAY_MS;
  checkCommonName(opts.commonName);
  checkValidDays(validMs / DAY_MS);
  const caX509 = parseCertificate(ca.certPem, 'CA certificate');
  checkKeyMatches(caX509, ca.keyPem, 'CA certificate', 'CA key');
  const caCert = forge.pki.certificateFromPem(ca.certPem);

  const altNames = opts.altNames ?? (opts.role === 'server' ? [opts.commonName] : []);
  const extensions: object[] = [
    { name: 'basicConstraints', cA: false, critical: true },
    // keyEncipherment covers TLS 1.2 RSA key transport; TLS 1.3 needs only digitalSignature.
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    opts.role === 'server' ? { name: 'extKeyUsage', serverAuth: true } : { name: 'extKeyUsage', clientAuth: true },
    { name: 'subjectKeyIdentifier' },
    // OpenSSL matches this against the CA's SKI when building the chain.
    { name: 'authorityKeyIdentifier', keyIdentifier: caKeyIdentifier(caCert) },
  ];
  if (altNames.length > 0) {
    extensions.push({ name: 'subjectAltName', altNames: altNames.map(toGeneralName) });
  }

  const cert = newCertificate(publicKeyPem, validMs / DAY_MS);
  cert.setSubject([{ shortName: 'CN', value: opts.commonName }]);
  cert.setIssuer(caCert.subject.attributes);
  cert.setExtensions(extensions);
  cert.sign(forge.pki.privateKeyFromPem(ca.keyPem), forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}

function newCertificate(publicKeyPem: string, validDays: number): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKeyPem);
  cert.serialNumber = randomSerialHex();
  const now = Date.now();
  const validMs = validDays * DAY_MS;
  // A short-lived certificate backdated by a whole hour would spend most of
  // its window before it was issued, and renewal at a fraction of it would come at once.
  cert.validity.notBefore = new Date(now - Math.min(CLOCK_SKEW_MS, validMs / 10));
  cert.validity.notAfter = new Date(now + validMs);
  return cert;
}

/**
 * RFC 5280 §4.1.2.2 wants a positive serial of at most 20 octets. forge writes
 * the hex verbatim as the DER INTEGER body, so the top bit must be clear (else
 * negative) and the first octet non-zero (else non-minimal, which OpenSSL rejects).
 */
function randomSerialHex(): string {
  const bytes = randomBytes(SERIAL_BYTES);
  bytes[0] = (bytes[0] & 0x7f) || 0x01;
  return bytes.toString('hex');
}

function caKeyIdentifier(caCert: forge.pki.Certificate): string {
  const ski = caCert.getExtension('subjectKeyIdentifier') as { subjectKeyIdentifier?: string } | undefined;
  return ski?.subjectKeyIdentifier !== undefined
    ? forge.util.hexToBytes(ski.subjectKeyIdentifier)
    : caCert.generateSubjectKeyIdentifier().getBytes();
}

function toGeneralName(name: string): { type: number; ip: string } | { type: number; value: string } {
  if (name.length === 0) throw new EdgemuxError('E_CONFIG', 'altNames: empty name');
  return isIP(name) !== 0 ? { type: GENERAL_NAME_IP, ip: name } : { type: GENERAL_NAME_DNS, value: name };
}

function generateKeyPem(): string {
  return generateKeyPairSync('rsa', { modulusLength: RSA_MODULUS_BITS })
    .privateKey.export({ type: 'pkcs8', format: 'pem' })
    .toString();
}

function publicKeyPemOf(privateKeyPem: string): string {
  return createPublicKey(createPrivateKey(privateKeyPem)).export({ type: 'spki', format: 'pem' }).toString();
}

function parseCertificate(pem: string, source: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (err) {
    throw new EdgemuxError('E_CONFIG', `${source}: not a PEM certificate`, { cause: err });
  }
}

function checkKeyMatches(cert: X509Certificate, keyPem: string, certSource: string, keySource: string): void {
  let key;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw new EdgemuxError('E_CONFIG', `${keySource}: not a PEM private key`, { cause: err });
  }
  if (!cert.checkPrivateKey(key)) {
    throw new EdgemuxError('E_CONFIG', `${keySource} does not match ${certSource}`);
  }
}

function checkNotExpired(cert: X509Certificate, source: string): void {
  if (Date.parse(cert.validTo) <= Date.now()) {
    throw new EdgemuxError('E_CONFIG', `${source} expired on ${cert.validTo}; delete it and its key to reissue`);
  }
}

function checkCommonName(commonName: string): void {
  if (commonName.length === 0) throw new EdgemuxError('E_CONFIG', 'commonName: must not be empty');
}

function checkValidDays(validDays: number): void {
  if (!Number.isFinite(validDays) || validDays <= 0) {
    throw new EdgemuxError('E_CONFIG', `validDays: expected a positive number, got ${validDays}`);
  }
}

function isErrnoCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === code;
}
