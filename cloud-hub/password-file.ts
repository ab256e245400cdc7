import { createHash, pbkdf2, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { EdgemuxError } from '../shared/errors.js';

const pbkdf2Async = promisify(pbkdf2);

/**
 * A password as `mosquitto_passwd` stores it, so users can keep the file they
 * already have: `$7$<iterations>$<salt>$<hash>` is PBKDF2-HMAC-SHA512 (what
 * Mosquitto 2.x writes), `$6$<salt>$<hash>` is SHA-512 over password then salt
 * (Mosquitto 1.x, and `mosquitto_passwd -H sha512`); salt and hash in base64.
 */
type StoredPassword =
  | { kind: 'sha512'; salt: Buffer; hash: Buffer }
  | { kind: 'pbkdf2-sha512'; iterations: number; salt: Buffer; hash: Buffer };

const SHA512_BYTES = 64;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** Application credentials read from a Mosquitto password file at start-up. */
export class PasswordFile {
  /** Checked when the user name is unknown, so the time taken does not tell which users exist. */
  private readonly decoy: StoredPassword;

  private constructor(
    readonly path: string,
    private readonly users: Map<string, StoredPassword>,
  ) {
    const model = users.values().next().value;
    this.decoy =
      model?.kind === 'sha512'
        ? { kind: 'sha512', salt: randomBytes(12), hash: randomBytes(SHA512_BYTES) }
        : { kind: 'pbkdf2-sha512', iterations: model?.iterations ?? 101, salt: randomBytes(12), hash: randomBytes(SHA512_BYTES) };
  }

  /** Reads and checks every line; a problem stops start-up naming `key`, the file and the line. */
  static read(path: string, key: string): PasswordFile {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new EdgemuxError('E_CONFIG', `${key}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    return new PasswordFile(path, parsePasswordFile(text, (line, problem) => `${key}: ${path} line ${line}: ${problem}`));
  }

  get userCount(): number {
    return this.users.size;
  }

  async verify(username: string, password: Buffer | undefined): Promise<boolean> {
    const stored = this.users.get(username);
    const matches = await matchesStored(stored ?? this.decoy, password ?? Buffer.alloc(0));
    return stored !== undefined && password !== undefined && matches;
  }
}

async function matchesStored(stored: StoredPassword, password: Buffer): Promise<boolean> {
  // Hashing off the event loop: PBKDF2 costs about as much as it is meant to.
  const hash =
    stored.kind === 'sha512'
      ? createHash('sha512').update(password).update(stored.salt).digest()
      : await pbkdf2Async(password, stored.salt, stored.iterations, stored.hash.length, 'sha512');
  return hash.length === stored.hash.length && timingSafeEqual(hash, stored.hash);
}

/** `user:hash` per line; blank lines and lines starting with # are skipped, as Mosquitto does. */
export function parsePasswordFile(text: string, problemAt: (line: number, problem: string) => string): Map<string, StoredPassword> {
  const users = new Map<string, StoredPassword>();
  const firstLine = new Map<string, number>();
  text.split('\n').forEach((raw, index) => {
    const lineNumber = index + 1;
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '' || line.startsWith('#')) return;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new EdgemuxError('E_CONFIG', problemAt(lineNumber, 'expected user:hash as written by mosquitto_passwd'));
    const username = line.slice(0, colon);
    const earlier = firstLine.get(username);
    if (earlier !== undefined) {
      throw new EdgemuxError('E_CONFIG', problemAt(lineNumber, `user ${JSON.stringify(username)} is already defined on line ${earlier}`));
    }
    const stored = parseStoredPassword(line.slice(colon + 1));
    if (typeof stored === 'string') throw new EdgemuxError('E_CONFIG', problemAt(lineNumber, `user ${JSON.stringify(username)}: ${stored}`));
    users.set(username, stored);
    firstLine.set(username, lineNumber);
  });
  return users;
}

/** The stored password, or what is wrong with it (never echoing the hash itself). */
function parseStoredPassword(field: string): StoredPassword | string {
  const parts = field.split('$');
  const decode = (b64: string | undefined, what: string): Buffer | string =>
    b64 !== undefined && BASE64.test(b64) ? Buffer.from(b64, 'base64') : `${what} is not base64`;
  if (parts[0] !== '' || parts.length < 2) {
    return 'expected a hashed password ($7$... or $6$...); plain-text passwords are not accepted, hash the file with mosquitto_passwd -U';
  }
  if (parts[1] === '6' && parts.length === 4) {
    const salt = decode(parts[2], 'salt');
    const hash = decode(parts[3], 'hash');
    if (typeof salt === 'string') return salt;
    if (typeof hash === 'string') return hash;
    if (hash.length !== SHA512_BYTES) return `a $6$ hash must be ${SHA512_BYTES} bytes (got ${hash.length})`;
    return { kind: 'sha512', salt, hash };
  }
  if (parts[1] === '7' && parts.length === 5) {
    const iterations = Number(parts[2]);
    if (!Number.isSafeInteger(iterations) || iterations < 1) return `iterations must be a positive integer (got ${JSON.stringify(parts[2])})`;
    const salt = decode(parts[3], 'salt');
    const hash = decode(parts[4], 'hash');
    if (typeof salt === 'string') return salt;
    if (typeof hash === 'string') return hash;
    if (hash.length !== SHA512_BYTES) return `a $7$ hash must be ${SHA512_BYTES} bytes (got ${hash.length})`;
    return { kind: 'pbkdf2-sha512', iterations, salt, hash };
  }
  return `unsupported hash type $${parts[1]}$: use $7$ (mosquitto_passwd -H sha512-pbkdf2, the Mosquitto 2.0 default) or $6$`;
}
