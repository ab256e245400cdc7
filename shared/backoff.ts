export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  /** Injected so tests are deterministic; returns a value in [0, 1). */
  random?: () => number;
}

/**
 * Exponential backoff with full jitter: after a hub restart, a fleet of
 * agents spreads its reconnects over the window instead of arriving at once.
 */
export class Backoff {
  private attempt = 0;
  private readonly random: () => number;

  constructor(private readonly options: BackoffOptions) {
    this.random = options.random ?? Math.random;
  }

  nextDelayMs(): number {
    const ceiling = Math.min(this.options.maxMs, this.options.initialMs * 2 ** this.attempt);
    this.attempt++;
    return Math.floor(this.random() * ceiling);
  }

  reset(): void {
    this.attempt = 0;
  }
}

/**
 * Why a dial to a hub failed. `unreachable`: no TCP connection (refused,
 * no route, timed out), so the link or the host is down and nothing was
 * asked of the hub. `refused`: the hub took the connection, then TLS or
 * HELLO failed: it is up and saying no.
 */
export type DialFailure = 'unreachable' | 'refused';

export interface ReconnectOptions extends BackoffOptions {
  /** Mean pause between probes while the hub is unreachable; each pause is drawn from [probeMs/2, 3·probeMs/2). */
  probeMs: number;
}

/**
 * When to dial a hub again. While the link is down, waiting longer after
 * each failure only delays the tunnel once the link is back (the issue seen:
 * 0.4–3 s), and a probe that finds no one costs the hub nothing; so probes
 * run at a short, bounded, jittered interval. A hub that refuses gets
 * exponential backoff, so a fleet does not hammer it.
 */
export class ReconnectPolicy {
  private readonly backoff: Backoff;
  private readonly random: () => number;

  constructor(private readonly options: ReconnectOptions) {
    this.random = options.random ?? Math.random;
    this.backoff = new Backoff({ ...options, random: this.random });
  }

  /** Pause before the next dial. Unreachable probes leave the refusal backoff where it was: they say nothing of the hub. */
  delayMs(failure: DialFailure): number {
    if (failure === 'refused') return this.backoff.nextDelayMs();
    const { probeMs } = this.options;
    // min: a random value just below 1 can round up to probeMs in the product.
    return Math.floor(probeMs / 2) + Math.min(probeMs - 1, Math.floor(this.random() * probeMs));
  }

  /** A tunnel came up: the hub is taking us again. */
  reset(): void {
    this.backoff.reset();
  }
}
