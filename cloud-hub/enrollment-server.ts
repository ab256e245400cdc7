import type tls from 'node:tls';
import { isEdgemuxError } from '../shared/errors.js';
import {
  encodeEnrollMessage,
  type EnrollRequest,
  type EnrollResponse,
  parseEnrollRequest,
  readEnrollMessage,
} from '../shared/enrollment-wire.js';
import type { Logger } from '../shared/logger.js';
import { type CertificateAndKey, certificateFingerprint, checkCertificateRequest, signCertificateRequest } from '../shared/pki.js';
import { EnrollmentRefused, type PkiStore } from './pki-store.js';

export interface EnrollmentServerOptions {
  store: PkiStore;
  /** The CA that signs agent certificates; the hub holds its key to answer enrollments. */
  ca: CertificateAndKey;
  /** Lifetime of the certificates issued, enrolled or renewed. */
  certValidityMs: number;
  log: Logger;
}

/** Requests handled at once; more are refused at once, so a flood costs a bounded amount of memory and CPU. */
const MAX_CONCURRENT_REQUESTS = 32;
/** How long a client has to read its answer and close before the connection is dropped. */
const ANSWER_LINGER_MS = 2000;

/**
 * Answers enrollment and renewal requests arriving on the tunnel port under
 * the enrollment ALPN protocol. Enrolling needs a token and no certificate;
 * renewing needs a valid, unrevoked client certificate and issues a new one
 * for the same name. The token itself is never logged, only its public id.
 */
export class EnrollmentServer {
  private inFlight = 0;

  constructor(private readonly options: EnrollmentServerOptions) {}

  handle(socket: tls.TLSSocket): void {
    const log = this.options.log.child({ remote: socket.remoteAddress });
    if (this.inFlight >= MAX_CONCURRENT_REQUESTS) {
      log.warn({ reason: `${MAX_CONCURRENT_REQUESTS} requests already in progress` }, 'enrollment request refused');
      this.answer(socket, { ok: false, code: 'busy', reason: 'hub busy with other enrollments; retry later' });
      return;
    }
    this.inFlight++;
    void this.serve(socket, log).finally(() => this.inFlight--);
  }

  private async serve(socket: tls.TLSSocket, log: Logger): Promise<void> {
    let request: EnrollRequest;
    try {
      request = parseEnrollRequest(await readEnrollMessage(socket));
    } catch (err) {
      const reason = (err as Error).message;
      log.warn({ reason }, 'enrollment request refused');
      if (!isEdgemuxError(err, 'E_ENROLL_TRANSPORT')) this.answer(socket, { ok: false, code: 'bad-request', reason });
      else socket.destroy();
      return;
    }
    try {
      this.answer(socket, this.respond(request, socket, log));
    } catch (err) {
      if (err instanceof EnrollmentRefused || isEdgemuxError(err, 'E_ENROLL_BAD_REQUEST')) {
        const code = err instanceof EnrollmentRefused ? err.refusal : 'bad-request';
        log.warn({ kind: request.kind, code, reason: err.message }, 'enrollment refused');
        this.answer(socket, { ok: false, code, reason: err.message });
        return;
      }
      log.error({ kind: request.kind, reason: (err as Error).message }, 'enrollment failed');
      this.answer(socket, { ok: false, code: 'internal', reason: 'the hub could not complete the request' });
    }
  }

  private respond(request: EnrollRequest, socket: tls.TLSSocket, log: Logger): EnrollResponse {
    const { store, ca, certValidityMs } = this.options;
    if (request.kind === 'ca') return { ok: true, ca: ca.certPem };
    if (request.kind === 'enroll') {
      // The request is checked before the token is spent, so a broken CSR does not burn it.
      checkCertificateRequest(request.csr);
      const { agentId, tokenId } = store.redeemToken(request.token);
      const signed = signCertificateRequest(ca, request.csr, { commonName: agentId, validMs: certValidityMs });
      store.recordCertificate({ serial: signed.serial, agentId, fingerprint: certificateFingerprint(signed.certPem), notAfter: signed.notAfter.getTime(), via: 'enroll' });
      log.info({ agentId, tokenId, serial: signed.serial, notAfter: signed.notAfter.toISOString() }, 'agent enrolled');
      return { ok: true, ca: ca.certPem, cert: signed.certPem, agentId };
    }
    if (!socket.authorized) {
      throw new EnrollmentRefused('certificate-required', `renewal needs a valid client certificate (${String(socket.authorizationError ?? 'none presented')})`);
    }
    const peer = socket.getPeerCertificate();
    const agentId = peer.subject?.CN;
    if (typeof agentId !== 'string' || agentId.length === 0) throw new EnrollmentRefused('certificate-required', 'client certificate has no common name');
    const serial = peer.serialNumber.toLowerCase().replace(/^0+(?=.)/, '');
    const revocation = store.revocationOf(agentId, serial);
    if (revocation !== null) throw new EnrollmentRefused('revoked', `agent ${agentId} was revoked at ${new Date(revocation.revoked_at).toISOString()}`);
    const signed = signCertificateRequest(ca, request.csr, { commonName: agentId, validMs: certValidityMs });
    store.recordCertificate({ serial: signed.serial, agentId, fingerprint: certificateFingerprint(signed.certPem), notAfter: signed.notAfter.getTime(), via: 'renew' });
    log.info({ agentId, previousSerial: serial, serial: signed.serial, notAfter: signed.notAfter.toISOString() }, 'agent certificate renewed');
    return { ok: true, ca: ca.certPem, cert: signed.certPem, agentId };
  }

  private answer(socket: tls.TLSSocket, response: EnrollResponse): void {
    socket.end(encodeEnrollMessage(response));
    // Until it closes the connection counts against the hub's unauthenticated limit: a client that never closes its side is dropped.
    setTimeout(() => socket.destroy(), ANSWER_LINGER_MS).unref();
  }
}
