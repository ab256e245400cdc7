import { EventEmitter } from 'node:events';
import type tls from 'node:tls';
import { ENROLL_ALPN, encodeEnrollMessage } from '../shared/enrollment-wire.js';
import { encodeControlFrame, FrameType, type GoodbyeBody } from '../shared/frame-codec.js';
import type { Logger } from '../shared/logger.js';
import { type CertificateProblem, certificateProblemOf, describeCertificateProblem } from '../shared/tls-failure.js';
import type { EnrollmentServer } from './enrollment-server.js';
import type { PkiStore } from './pki-store.js';

export interface AgentGateOptions {
  /** Revocations to enforce and poll; without it the CA alone decides. */
  store?: PkiStore;
  /** Answers enrollment and renewal connections; without it they are refused. */
  enrollment?: EnrollmentServer;
  /** How often the store is read for revocations made by other processes (`cloud-hub pki revoke`). */
  revocationPollMs?: number;
  log: Logger;
}

export interface AgentGateEvents {
  /** Every tunnel and session of this agent must end now. */
  revoked: [agentId: string, reason: string];
}

/** An admitted tunnel's certificate, watched for revocation and expiry. */
interface Admitted {
  agentId: string;
  serial: string;
  notAfter: number;
}

export const DEFAULT_REVOCATION_POLL_MS = 500;
/** How long a refused connection may take to read its GOODBYE and close before it is dropped. */
const REFUSAL_LINGER_MS = 2000;

/**
 * First look at every TLS connection on the tunnel port: sends enrollment
 * connections to the enrollment server, refuses a certificate that does not
 * pass (with a GOODBYE naming the failed check, where a TLS-level rejection
 * would reach the agent only as a reset), and lets the rest through as
 * tunnels. The TLS server therefore requests a client certificate without
 * rejecting the handshake itself; nothing is read from a connection this
 * gate did not admit.
 */
export class AgentGate extends EventEmitter<AgentGateEvents> {
  private readonly admitted = new Map<tls.TLSSocket, Admitted>();
  private lastRevocation = 0;
  private readonly poll: NodeJS.Timeout | null = null;

  constructor(private readonly options: AgentGateOptions) {
    super();
    if (options.store !== undefined) {
      // Only revocations made from now on need acting on: older ones are checked at each handshake.
      this.lastRevocation = options.store.revocationsSince(0).at(-1)?.seq ?? 0;
      this.poll = setInterval(() => this.sweep(), options.revocationPollMs ?? DEFAULT_REVOCATION_POLL_MS);
      this.poll.unref();
    }
  }

  /** True when the connection is a tunnel to accept; otherwise the gate has taken it over. */
  admit(socket: tls.TLSSocket): boolean {
    const log = this.options.log.child({ remote: socket.remoteAddress });
    if (socket.alpnProtocol === ENROLL_ALPN) {
      if (this.options.enrollment !== undefined) this.options.enrollment.handle(socket);
      else {
        log.warn({ reason: 'enrollment is not enabled on this hub (no --pki-dir)' }, 'enrollment request refused');
        socket.end(encodeEnrollMessage({ ok: false, code: 'not-enabled', reason: 'enrollment is not enabled on this hub' }));
        setTimeout(() => socket.destroy(), REFUSAL_LINGER_MS).unref();
      }
      return false;
    }
    const peer = socket.getPeerCertificate();
    const presented = peer !== null && Object.keys(peer).length > 0;
    if (!socket.authorized) {
      // Typed as an Error, but node:tls hands over OpenSSL's verify code as a plain string.
      const failure = socket.authorizationError as unknown as string | { code?: string; message?: string } | null;
      const code = typeof failure === 'string' ? failure : (failure?.code ?? null);
      const problem: CertificateProblem = presented ? (certificateProblemOf(code) ?? 'invalid') : 'no-certificate';
      const reason = presented && code !== null ? `${describeCertificateProblem(problem)} (${code})` : describeCertificateProblem(problem);
      // The name of a certificate that did not verify is whatever its maker wrote: logged as presented, never trusted.
      this.refuse(socket, log.child({ presentedCn: presented ? peer.subject?.CN : undefined }), problem, reason);
      return false;
    }
    const agentId = peer.subject?.CN;
    if (typeof agentId !== 'string' || agentId.length === 0) {
      this.refuse(socket, log, 'no-common-name', describeCertificateProblem('no-common-name'));
      return false;
    }
    const serial = peer.serialNumber.toLowerCase().replace(/^0+(?=.)/, '');
    const revocation = this.options.store?.revocationOf(agentId, serial) ?? null;
    if (revocation !== null) {
      this.refuse(socket, log.child({ agentId, serial }), 'revoked', `certificate of agent ${agentId} revoked at ${new Date(revocation.revoked_at).toISOString()}: ${revocation.reason}`);
      return false;
    }
    this.admitted.set(socket, { agentId, serial, notAfter: Date.parse(peer.valid_to) });
    socket.once('close', () => this.admitted.delete(socket));
    return true;
  }

  /**
   * A handshake that failed before there was a connection to refuse. An agent
   * that does not accept the hub's certificate just drops the handshake, so
   * the hub sees only a reset: it says what that usually means, at info since
   * the hub decided nothing (the agent's log names the failed check).
   */
  handshakeFailed(err: NodeJS.ErrnoException, socket: { remoteAddress?: string }): void {
    const problem = certificateProblemOf(err.code);
    const dropped = err.code === 'ECONNRESET' || err.message === 'socket hang up';
    const fields = { remote: socket.remoteAddress, reason: err.message, ...(problem !== null ? { problem } : {}) };
    if (dropped) {
      const hint = 'the agent dropped the handshake: it likely refused the hub certificate (unknown CA, expired or wrong name; its log says which)';
      this.options.log.info({ ...fields, hint }, 'tunnel TLS handshake refused');
    } else {
      this.options.log.warn(fields, 'tunnel TLS handshake refused');
    }
  }

  close(): void {
    if (this.poll !== null) clearInterval(this.poll);
  }

  /** Acts on revocations made since the last look, and closes tunnels whose certificate has expired since their handshake. */
  private sweep(): void {
    const { store, log } = this.options;
    let revocations;
    try {
      revocations = store!.revocationsSince(this.lastRevocation);
    } catch (err) {
      log.error({ reason: (err as Error).message }, 'revocations could not be read; retrying');
      return;
    }
    for (const revocation of revocations) {
      this.lastRevocation = revocation.seq;
      log.warn({ agentId: revocation.agent_id, reason: revocation.reason }, 'agent revoked; closing its tunnels and ending its sessions');
      this.emit('revoked', revocation.agent_id, revocation.reason);
      // Tunnels still before HELLO are not the hub's yet: end them here.
      for (const [socket, admitted] of this.admitted) {
        if (admitted.agentId === revocation.agent_id && store!.revocationOf(admitted.agentId, admitted.serial) !== null) {
          this.refuse(socket, log.child({ agentId: admitted.agentId }), 'revoked', `certificate of agent ${admitted.agentId} revoked: ${revocation.reason}`, false);
        }
      }
    }
    const now = Date.now();
    for (const [socket, admitted] of this.admitted) {
      if (admitted.notAfter > now) continue;
      // A plain close: the agent's streams resume on a tunnel made with its renewed certificate.
      log.info({ agentId: admitted.agentId, serial: admitted.serial }, 'agent certificate expired; closing the tunnel it carried');
      this.admitted.delete(socket);
      socket.destroy();
    }
  }

  private refuse(socket: tls.TLSSocket, log: Logger, problem: CertificateProblem, reason: string, logIt = true): void {
    this.admitted.delete(socket);
    if (logIt) log.warn({ problem, reason }, 'tunnel refused');
    const body: GoodbyeBody = problem === 'revoked' ? { code: 'revoked', reason } : { code: 'certificate-refused', reason, problem };
    if (socket.destroyed || socket.writableEnded) return;
    // Nothing sent by a refused peer is read; it is drained so its close comes through.
    socket.resume();
    socket.end(encodeControlFrame({ type: FrameType.GOODBYE, streamId: 0, body }));
    setTimeout(() => socket.destroy(), REFUSAL_LINGER_MS).unref();
  }
}
