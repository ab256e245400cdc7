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
