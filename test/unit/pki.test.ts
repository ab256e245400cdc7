import { X509Certificate, createHash, createPrivateKey } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isEdgemuxError } from '../../shared/errors.js';
import {
  type CertificateAndKey,
  certificateFingerprint,
  createCertificateAuthority,
  ensureDevPki,
  issueCertificate,
} from '../../shared/pki.js';

const SERVER_AUTH_OID = '1.3.6.1.5.5.7.3.1';
const CLIENT_AUTH_OID = '1.3.6.1.5.5.7.3.2';
// RSA keygen dominates; a handful of keys per test stays well under this.
const KEYGEN_TIMEOUT_MS = 30_000;

function expectConfigError(fn: () => unknown): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(isEdgemuxError(thrown, 'E_CONFIG')).toBe(true);
}

describe('certificate issuance', () => {
  let ca: CertificateAndKey;
  let caX509: X509Certificate;
  let server: CertificateAndKey;
  let client: CertificateAndKey;

  beforeAll(() => {
    ca = createCertificateAuthority({ commonName: 'test CA' });
    caX509 = new X509Certificate(ca.certPem);
    server = issueCertificate(ca, { commonName: 'hub', role: 'server', altNames: ['localhost', '127.0.0.1', '::1'] });
    client = issueCertificate(ca, { commonName: 'agent-7', role: 'client' });
  }, KEYGEN_TIMEOUT_MS);

  it('makes a self-signed CA', () => {
    expect(caX509.ca).toBe(true);
    expect(caX509.subject).toBe('CN=test CA');
    expect(caX509.checkIssued(caX509)).toBe(true);
    expect(caX509.verify(caX509.publicKey)).toBe(true);
  });

  it('issues a server certificate with serverAuth and the requested SANs', () => {
    const cert = new X509Certificate(server.certPem);
    expect(cert.ca).toBe(false);
    expect(cert.subject).toBe('CN=hub');
    expect(cert.checkIssued(caX509)).toBe(true);
    expect(cert.verify(caX509.publicKey)).toBe(true);
    expect(cert.keyUsage).toEqual([SERVER_AUTH_OID]);
    expect(cert.subjectAltName).toBe('DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1');
    expect(cert.checkHost('localhost')).toBe('localhost');
    expect(cert.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(cert.checkHost('example.com')).toBeUndefined();
  });

  it('issues a client certificate with clientAuth and no SANs', () => {
    const cert = new X509Certificate(client.certPem);
    expect(cert.subject).toBe('CN=agent-7');
    expect(cert.checkIssued(caX509)).toBe(true);
    expect(cert.verify(caX509.publicKey)).toBe(true);
    expect(cert.keyUsage).toEqual([CLIENT_AUTH_OID]);
    expect(cert.subjectAltName).toBeUndefined();
  });

  it('gives a server certificate without altNames its commonName as SAN', () => {
    const issued = issueCertificate(ca, { commonName: 'hub.example', role: 'server' });
    expect(new X509Certificate(issued.certPem).subjectAltName).toBe('DNS:hub.example');
  }, KEYGEN_TIMEOUT_MS);

  it('pairs each certificate with its own private key', () => {
    const cert = new X509Certificate(server.certPem);
    expect(server.keyPem).toContain('BEGIN PRIVATE KEY');
    expect(cert.checkPrivateKey(createPrivateKey(server.keyPem))).toBe(true);
    expect(cert.checkPrivateKey(createPrivateKey(client.keyPem))).toBe(false);
  });

  it('uses random positive 16-byte serial numbers', () => {
    const serials = [ca, server, client].map((c) => new X509Certificate(c.certPem).serialNumber);
    for (const serial of serials) {
      expect(serial).toMatch(/^[0-7][0-9A-F]{31}$/);
      expect(serial).not.toMatch(/^00/);
    }
    expect(new Set(serials).size).toBe(serials.length);
  });

  it('backdates notBefore to tolerate clock skew', () => {
    const cert = new X509Certificate(client.certPem);
    const skewMs = Date.now() - Date.parse(cert.validFrom);
    expect(skewMs).toBeGreaterThan(59 * 60 * 1000);
    expect(skewMs).toBeLessThan(61 * 60 * 1000);
  });

  it('defaults leaf validity to 365 days', () => {
    const cert = new X509Certificate(client.certPem);
    const days = (Date.parse(cert.validTo) - Date.now()) / 86_400_000;
    expect(days).toBeGreaterThan(364);
    expect(days).toBeLessThanOrEqual(365);
  });

  it('does not chain to a different CA', () => {
    const other = new X509Certificate(createCertificateAuthority({ commonName: 'test CA' }).certPem);
    const cert = new X509Certificate(server.certPem);
    // Same subject name as the real CA, so only the key identifiers and signature tell them apart.
    expect(cert.checkIssued(other)).toBe(false);
    expect(cert.verify(other.publicKey)).toBe(false);
  }, KEYGEN_TIMEOUT_MS);

  it('refuses a CA whose key does not match its certificate', () => {
    const other = createCertificateAuthority();
    expectConfigError(() => issueCertificate({ certPem: ca.certPem, keyPem: other.keyPem }, { commonName: 'x', role: 'client' }));
  }, KEYGEN_TIMEOUT_MS);

  it('rejects an empty commonName and non-positive validDays', () => {
    expectConfigError(() => issueCertificate(ca, { commonName: '', role: 'client' }));
    expectConfigError(() => issueCertificate(ca, { commonName: 'x', role: 'client', validDays: 0 }));
    expectConfigError(() => createCertificateAuthority({ validDays: -1 }));
  }, KEYGEN_TIMEOUT_MS);

  it('computes a stable lowercase SHA-256 fingerprint of the DER', () => {
    const fp = certificateFingerprint(server.certPem);
    expect(fp).toMatch(/^[0-9a-f]{64}$/);
    expect(certificateFingerprint(server.certPem)).toBe(fp);
    expect(fp).toBe(createHash('sha256').update(new X509Certificate(server.certPem).raw).digest('hex'));
    expect(certificateFingerprint(client.certPem)).not.toBe(fp);
  });
});

describe('ensureDevPki', () => {
  let tmp: string;

  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'edgemux-pki-'));
  });

  afterAll(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('creates the PKI once and reuses it, adding agents on request', async () => {
    const dir = join(tmp, 'reuse', 'pki');
    const first = await ensureDevPki(dir);
    expect(first.dir).toBe(dir);
    expect(Object.keys(first.agents)).toEqual(['agent-1']);
    expect((await readdir(dir)).sort()).toEqual([
      'agent-agent-1-key.pem',
      'agent-agent-1.pem',
      'ca-key.pem',
      'ca.pem',
      'hub-key.pem',
      'hub.pem',
    ]);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    for (const key of ['ca-key.pem', 'hub-key.pem', 'agent-agent-1-key.pem']) {
      expect((await stat(join(dir, key))).mode & 0o777).toBe(0o600);
    }
    expect(await readFile(join(dir, 'ca.pem'), 'utf8')).toBe(first.ca);

    const caX509 = new X509Certificate(first.ca);
    const hub = new X509Certificate(first.hub.cert);
    expect(hub.checkIssued(caX509)).toBe(true);
    expect(hub.keyUsage).toEqual([SERVER_AUTH_OID]);
    expect(hub.checkHost('localhost')).toBe('localhost');
    expect(hub.checkIP('127.0.0.1')).toBe('127.0.0.1');
    const agent = new X509Certificate(first.agents['agent-1'].cert);
    expect(agent.subject).toBe('CN=agent-1');
    expect(agent.keyUsage).toEqual([CLIENT_AUTH_OID]);
    expect(agent.verify(caX509.publicKey)).toBe(true);
    expect(first.hub.ca).toBe(first.ca);
    expect(first.agents['agent-1'].ca).toBe(first.ca);

    const second = await ensureDevPki(dir, { agentIds: ['agent-1', 'agent-2'] });
    expect(second.ca).toBe(first.ca);
    expect(second.hub).toEqual(first.hub);
    expect(second.agents['agent-1']).toEqual(first.agents['agent-1']);
    const added = new X509Certificate(second.agents['agent-2'].cert);
    expect(added.subject).toBe('CN=agent-2');
    expect(added.checkIssued(caX509)).toBe(true);
    expect(added.verify(caX509.publicKey)).toBe(true);
    expect(await readdir(dir)).toContain('agent-agent-2-key.pem');
  }, KEYGEN_TIMEOUT_MS);

  it('converges on one CA when two callers race on an empty directory', async () => {
    const dir = join(tmp, 'race');
    const [a, b] = await Promise.all([ensureDevPki(dir), ensureDevPki(dir)]);
    expect(a.ca).toBe(b.ca);
    expect(a.hub).toEqual(b.hub);
    expect(a.agents).toEqual(b.agents);
    expect(new X509Certificate(a.hub.cert).checkIssued(new X509Certificate(a.ca))).toBe(true);
    // Losers' temp files must not be left behind.
    expect((await readdir(dir)).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  }, KEYGEN_TIMEOUT_MS);

  it('rejects agent ids that would escape the directory', async () => {
    const err = await ensureDevPki(join(tmp, 'bad-id'), { agentIds: ['../evil'] }).catch((e: unknown) => e);
    expect(isEdgemuxError(err, 'E_CONFIG')).toBe(true);
  });

  it('refuses an existing hub certificate that lacks a requested hostname', async () => {
    const dir = join(tmp, 'hosts');
    await ensureDevPki(dir);
    const err = await ensureDevPki(dir, { hubHostnames: ['hub.internal'] }).catch((e: unknown) => e);
    expect(isEdgemuxError(err, 'E_CONFIG')).toBe(true);
    expect((err as Error).message).toContain('hub.internal');
  }, KEYGEN_TIMEOUT_MS);

  it('refuses leaves kept across a regenerated CA', async () => {
    const dir = join(tmp, 'regen');
    await ensureDevPki(dir);
    await rm(join(dir, 'ca.pem'));
    await rm(join(dir, 'ca-key.pem'));
    const err = await ensureDevPki(dir).catch((e: unknown) => e);
    expect(isEdgemuxError(err, 'E_CONFIG')).toBe(true);
  }, KEYGEN_TIMEOUT_MS);
});
