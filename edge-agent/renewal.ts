import type { Logger } from '../shared/logger.js';
import type { TlsMaterial } from '../shared/pki.js';
import { EnrollmentRefusedByHub, type Identity, identityFrom, renew, saveIdentity } from './enrollment.js';
import type { HubAddress } from './tunnel-pool.js';

export interface RenewalOptions {
  dir: string;
  identity: Identity;
  /** Hubs to ask, in order; read at each attempt so a reload's list is used. */
  hubs: () => HubAddress[];
  serverName?: string;
  /** Share of the certificate's validity after which it is renewed (0.67: at two thirds). */
  renewAt: number;
  /** The new certificate and key, already on disk: use them for tunnels dialled from now on. */
  onRenewed(material: TlsMaterial, identity: Identity): void;
  log: Logger;
}

/** setTimeout fires at once for delays past 2^31 − 1 ms (about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** After a failed renewal: soon enough to finish well before expiry, seldom enough not to hammer a hub that is down. */
const MIN_RETRY_MS = 1000;
const MAX_RETRY_MS = 60_000;

/**
 * Renews the agent certificate at a fixed share of its validity, over the
 * mutual-TLS identity it still holds, and retries until it succeeds or the
 * certificate expires (after which only a new enrollment helps).
 */
export class CertificateRenewal {
  private identity: Identity;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(private readonly options: RenewalOptions) {
    this.identity = options.identity;
  }

  /** When the current certificate is due for renewal. */
  get dueAt(): number {
    const { notBefore, notAfter } = this.identity;
    return notBefore + this.options.renewAt * (notAfter - notBefore);
  }

  start(): void {
    this.schedule(this.dueAt - Date.now());
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    const wait = Math.max(0, delayMs);
    this.timer = setTimeout(() => {
      if (Date.now() < this.dueAt) this.schedule(this.dueAt - Date.now());
      else void this.attempt();
    }, Math.min(wait, MAX_TIMER_MS));
    this.timer.unref();
  }

  private async attempt(): Promise<void> {
    const { log } = this.options;
    const errors: string[] = [];
    for (const hub of this.options.hubs()) {
      try {
        const material = await renew(hub, this.identity, this.options.serverName);
        if (this.stopped) return;
        await saveIdentity(this.options.dir, material);
        const previous = this.identity;
        this.identity = identityFrom(material);
        log.info(
          { agentId: this.identity.agentId, serial: this.identity.serial, previousSerial: previous.serial, notAfter: new Date(this.identity.notAfter).toISOString() },
          'agent certificate renewed',
        );
        this.options.onRenewed(material, this.identity);
        this.schedule(this.dueAt - Date.now());
        return;
      } catch (err) {
        errors.push(`${hub.host}:${hub.port}: ${(err as Error).message}`);
        if (err instanceof EnrollmentRefusedByHub) break;
      }
    }
    const remaining = this.identity.notAfter - Date.now();
    const retryMs = Math.min(MAX_RETRY_MS, Math.max(MIN_RETRY_MS, remaining / 10));
    const fields = { agentId: this.identity.agentId, notAfter: new Date(this.identity.notAfter).toISOString(), retryInMs: Math.round(retryMs), reason: errors.join('; ') };
    if (remaining <= 0) log.error(fields, 'agent certificate expired without renewal; enroll again with a new token');
    else log.warn(fields, 'agent certificate renewal failed; retrying');
    this.schedule(retryMs);
  }
}
