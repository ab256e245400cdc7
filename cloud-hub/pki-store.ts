/**
 * The hub's records of agent identity, in SQLite beside the CA (`pki.sqlite`
 * in the PKI directory): enrollment tokens (hashed), the certificates issued
 * from them and their renewals, and revocations.
 *
 * Several processes open the file at once: the running hub, and the
 * `cloud-hub pki` commands an operator runs beside it. WAL mode lets them
 * read while one writes; every write is one statement or one transaction, and
 * the single-use rule of a token is a conditional UPDATE, so two hubs (or
 * two requests) redeeming the same token cannot both succeed.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { EdgemuxError } from '../shared/errors.js';
import { openStateFile } from './sqlite-file.js';

export const PKI_STORE_FILE = 'pki.sqlite';

/** Why an enrollment or renewal is refused; the same words go to the agent and into both logs. */
export type RefusalCode = 'token-invalid' | 'token-used' | 'token-expired' | 'revoked' | 'certificate-required' | 'bad-request';

export class EnrollmentRefused extends EdgemuxError {
  constructor(
    readonly refusal: RefusalCode,
    message: string,
  ) {
    super('E_ENROLL_REFUSED', message);
    this.name = 'EnrollmentRefused';
  }
}

export interface IssuedToken {
  /** The whole token, `<id>.<secret>`: shown once, never stored or logged. */
  token: string;
  /** The public half, safe for lists and logs. */
  id: string;
  agentId: string;
  expiresAt: number;
}

export interface TokenRow {
  id: string;
  agent_id: string;
  created_at: number;
  expires_at: number;
  used_at: number | null;
}

export interface CertificateRow {
  serial: string;
  agent_id: string;
  fingerprint: string;
  issued_at: number;
  not_after: number;
  /** 'enroll' or 'renew'. */
  via: string;
}

export interface RevocationRow {
  seq: number;
  agent_id: string;
  revoked_at: number;
  reason: string;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS enrollment_tokens (
  id TEXT PRIMARY KEY,
  agent_id TEXT NOT NULL,
  secret_sha256 BLOB NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  used_at INTEGER
);
CREATE TABLE IF NOT EXISTS agent_certificates (
  serial TEXT PRIMARY KEY,
  agent_id TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  issued_at INTEGER NOT NULL,
  not_after INTEGER NOT NULL,
  via TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS agent_certificates_by_agent ON agent_certificates (agent_id);
CREATE TABLE IF NOT EXISTS revocations (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  agent_id TEXT NOT NULL,
  revoked_at INTEGER NOT NULL,
  reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS revocations_by_agent ON revocations (agent_id);
`;

const TOKEN_ID_BYTES = 8;
/** 256 bits: guessing is hopeless even against a hub that answers every try. */
const TOKEN_SECRET_BYTES = 32;
const TOKEN_PATTERN = /^([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$/;
/** A used or expired token is kept this long for `pki list`, then deleted. */
const TOKEN_KEPT_MS = 7 * 24 * 60 * 60 * 1000;
/** The `pki` commands may find the hub writing; wait for it rather than fail. */
const BUSY_TIMEOUT_MS = 5000;

function sha256(data: string): Buffer {
  return createHash('sha256').update(data).digest();
}

export class PkiStore {
  readonly db: Database.Database;
  private readonly now: () => number;

  constructor(path: string, options: { now?: () => number } = {}) {
    // Owner only, its WAL too: the hashes are not secrets, but who enrolled when is nobody else's business.
    this.db = openStateFile(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    this.db.exec(SCHEMA);
    this.now = options.now ?? Date.now;
  }

  static inDir(dir: string, options: { now?: () => number } = {}): PkiStore {
    return new PkiStore(join(dir, PKI_STORE_FILE), options);
  }

  createToken(agentId: string, ttlMs: number): IssuedToken {
    if (!Number.isFinite(ttlMs) || ttlMs <= 0) throw new EdgemuxError('E_CONFIG', `ttl: expected a positive duration, got ${ttlMs} ms`);
    const id = randomBytes(TOKEN_ID_BYTES).toString('hex');
    const secret = randomBytes(TOKEN_SECRET_BYTES).toString('base64url');
    const now = this.now();
    const expiresAt = now + ttlMs;
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM enrollment_tokens WHERE max(expires_at, coalesce(used_at, 0)) < ?').run(now - TOKEN_KEPT_MS);
      this.db
        .prepare('INSERT INTO enrollment_tokens (id, agent_id, secret_sha256, created_at, expires_at) VALUES (?, ?, ?, ?, ?)')
        .run(id, agentId, sha256(secret), now, expiresAt);
    })();
    return { token: `${id}.${secret}`, id, agentId, expiresAt };
  }

  /**
   * Spends a token, returning the agent it was made for. Only a holder of the
   * right secret learns that a token was used or expired; anything else is
   * "invalid", so the answer tells a stranger nothing about which ids exist.
   */
  redeemToken(token: string): { agentId: string; tokenId: string } {
    const match = TOKEN_PATTERN.exec(token);
    const row = match
      ? (this.db.prepare('SELECT agent_id, secret_sha256, expires_at, used_at FROM enrollment_tokens WHERE id = ?').get(match[1]) as
          | { agent_id: string; secret_sha256: Buffer; expires_at: number; used_at: number | null }
          | undefined)
      : undefined;
    // Hash and compare even when nothing matched, so timing does not tell a known id from an unknown one.
    const presented = sha256(match?.[2] ?? token);
    const expected = row?.secret_sha256 ?? Buffer.alloc(presented.length);
    if (!timingSafeEqual(presented, expected) || row === undefined || match === null) {
      throw new EnrollmentRefused('token-invalid', 'enrollment token not recognised');
    }
    const tokenId = match[1];
    if (row.used_at !== null) throw new EnrollmentRefused('token-used', `enrollment token ${tokenId} was already used`);
    const now = this.now();
    if (row.expires_at <= now) {
      throw new EnrollmentRefused('token-expired', `enrollment token ${tokenId} expired at ${new Date(row.expires_at).toISOString()}`);
    }
    const spent = this.db.prepare('UPDATE enrollment_tokens SET used_at = ? WHERE id = ? AND used_at IS NULL').run(now, tokenId);
    if (spent.changes !== 1) throw new EnrollmentRefused('token-used', `enrollment token ${tokenId} was already used`);
    return { agentId: row.agent_id, tokenId };
  }

  recordCertificate(cert: { serial: string; agentId: string; fingerprint: string; notAfter: number; via: 'enroll' | 'renew' }): void {
    this.db
      .prepare('INSERT INTO agent_certificates (serial, agent_id, fingerprint, issued_at, not_after, via) VALUES (?, ?, ?, ?, ?, ?)')
      .run(cert.serial, cert.agentId, cert.fingerprint, this.now(), cert.notAfter, cert.via);
  }

  /**
   * Revokes every certificate the agent holds now, whoever issued it: any
   * certificate with its name is refused from here on, except one issued
   * after this moment (from a new enrollment token, a deliberate re-admission).
   */
  revokeAgent(agentId: string, reason: string): RevocationRow {
    const revokedAt = this.now();
    const result = this.db.prepare('INSERT INTO revocations (agent_id, revoked_at, reason) VALUES (?, ?, ?)').run(agentId, revokedAt, reason);
    return { seq: Number(result.lastInsertRowid), agent_id: agentId, revoked_at: revokedAt, reason };
  }

  revocationsSince(seq: number): RevocationRow[] {
    return this.db.prepare('SELECT seq, agent_id, revoked_at, reason FROM revocations WHERE seq > ? ORDER BY seq').all(seq) as RevocationRow[];
  }

  /** The latest revocation of this agent that a certificate with `serial` falls under, or null. */
  revocationOf(agentId: string, serial: string): RevocationRow | null {
    const latest = this.db
      .prepare('SELECT seq, agent_id, revoked_at, reason FROM revocations WHERE agent_id = ? ORDER BY seq DESC LIMIT 1')
      .get(agentId) as RevocationRow | undefined;
    if (latest === undefined) return null;
    const issued = this.db.prepare('SELECT issued_at FROM agent_certificates WHERE serial = ? AND agent_id = ?').get(serial, agentId) as
      | { issued_at: number }
      | undefined;
    return issued !== undefined && issued.issued_at > latest.revoked_at ? null : latest;
  }

  list(): { tokens: TokenRow[]; certificates: CertificateRow[]; revocations: RevocationRow[] } {
    return {
      tokens: this.db.prepare('SELECT id, agent_id, created_at, expires_at, used_at FROM enrollment_tokens ORDER BY created_at').all() as TokenRow[],
      certificates: this.db.prepare('SELECT serial, agent_id, fingerprint, issued_at, not_after, via FROM agent_certificates ORDER BY issued_at').all() as CertificateRow[],
      revocations: this.revocationsSince(0),
    };
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
