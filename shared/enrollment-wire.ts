/**
 * Enrollment and renewal messages (docs/protocol.md, section 15). They ride
 * the tunnel port, told apart from tunnels by the TLS ALPN protocol, so a
 * site opens one outbound port for everything. Each connection carries one
 * request and one response: a 4-byte big-endian length, then UTF-8 JSON.
 */
import type { Duplex } from 'node:stream';
import { EdgemuxError } from './errors.js';

/** Offered by an agent that enrolls or renews; a tunnel offers no ALPN protocol. */
export const ENROLL_ALPN = 'edgemux-enroll/1';
/** A CSR of a 2048-bit RSA key is about 1 KiB and a token 60 bytes: this leaves room and bounds what a stranger can make the hub hold. */
export const MAX_ENROLL_MESSAGE_BYTES = 16 * 1024;
/** A request or response not complete by then is abandoned. */
export const ENROLL_MESSAGE_TIMEOUT_MS = 10_000;
const LENGTH_BYTES = 4;

export type EnrollRequest =
  /** The CA certificate, public: the agent checks it against the fingerprint it was given before trusting it. */
  | { kind: 'ca' }
  /** A first certificate, for the agent the token was made for. */
  | { kind: 'enroll'; token: string; csr: string }
  /** A fresh certificate for the identity of the client certificate presented on this connection. */
  | { kind: 'renew'; csr: string };

export type EnrollResponse =
  | { ok: true; ca: string; cert?: string; agentId?: string }
  | { ok: false; code: string; reason: string };

export function encodeEnrollMessage(message: EnrollRequest | EnrollResponse): Buffer {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  if (body.length > MAX_ENROLL_MESSAGE_BYTES) {
    throw new EdgemuxError('E_ENROLL_BAD_REQUEST', `message of ${body.length} bytes exceeds ${MAX_ENROLL_MESSAGE_BYTES}`);
  }
  const header = Buffer.alloc(LENGTH_BYTES);
  header.writeUInt32BE(body.length);
  return Buffer.concat([header, body]);
}

/**
 * Reads one message from `socket`. Rejects as soon as the announced length
 * exceeds `maxBytes` (before buffering the body), when the peer closes
 * early, or past `timeoutMs`. At most `maxBytes` + 4 bytes are held.
 */
export function readEnrollMessage(socket: Duplex, maxBytes = MAX_ENROLL_MESSAGE_BYTES, timeoutMs = ENROLL_MESSAGE_TIMEOUT_MS): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let held = 0;
    let expected: number | null = null;
    const finish = (err: Error | null, value?: unknown): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onError);
      if (err !== null) reject(err);
      else resolve(value);
    };
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      held += chunk.length;
      if (expected === null && held >= LENGTH_BYTES) {
        expected = Buffer.concat(chunks).readUInt32BE(0);
        if (expected > maxBytes) {
          finish(new EdgemuxError('E_ENROLL_BAD_REQUEST', `message of ${expected} bytes announced, at most ${maxBytes} accepted`));
          return;
        }
      }
      if (expected !== null && held > LENGTH_BYTES + expected) {
        finish(new EdgemuxError('E_ENROLL_BAD_REQUEST', 'bytes after the message'));
        return;
      }
      if (expected !== null && held === LENGTH_BYTES + expected) {
        const body = Buffer.concat(chunks).subarray(LENGTH_BYTES);
        try {
          finish(null, JSON.parse(body.toString('utf8')));
        } catch (err) {
          finish(new EdgemuxError('E_ENROLL_BAD_REQUEST', 'message is not JSON', { cause: err }));
        }
      }
    };
    const onEnd = (): void => finish(new EdgemuxError('E_ENROLL_TRANSPORT', 'connection closed before a whole message arrived'));
    const onError = (err: Error): void => finish(new EdgemuxError('E_ENROLL_TRANSPORT', err.message, { cause: err }));
    const timer = setTimeout(() => finish(new EdgemuxError('E_ENROLL_TRANSPORT', `no whole message within ${timeoutMs} ms`)), timeoutMs);
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
    socket.once('error', onError);
  });
}

export function parseEnrollRequest(value: unknown): EnrollRequest {
  const bad = (why: string): EdgemuxError => new EdgemuxError('E_ENROLL_BAD_REQUEST', why);
  if (typeof value !== 'object' || value === null) throw bad('request is not an object');
  const record = value as Record<string, unknown>;
  switch (record.kind) {
    case 'ca':
      return { kind: 'ca' };
    case 'enroll':
      if (typeof record.token !== 'string' || typeof record.csr !== 'string') throw bad('enroll needs token and csr strings');
      return { kind: 'enroll', token: record.token, csr: record.csr };
    case 'renew':
      if (typeof record.csr !== 'string') throw bad('renew needs a csr string');
      return { kind: 'renew', csr: record.csr };
    default:
      throw bad('unknown request kind');
  }
}

export function parseEnrollResponse(value: unknown): EnrollResponse {
  if (typeof value === 'object' && value !== null) {
    const record = value as Record<string, unknown>;
    if (record.ok === true && typeof record.ca === 'string') {
      return {
        ok: true,
        ca: record.ca,
        ...(typeof record.cert === 'string' ? { cert: record.cert } : {}),
        ...(typeof record.agentId === 'string' ? { agentId: record.agentId } : {}),
      };
    }
    if (record.ok === false && typeof record.code === 'string' && typeof record.reason === 'string') {
      return { ok: false, code: record.code, reason: record.reason };
    }
  }
  throw new EdgemuxError('E_ENROLL_TRANSPORT', 'hub answered with a malformed enrollment response');
}
