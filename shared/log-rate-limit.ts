import type { Logger } from './logger.js';

export interface RateLimitedLogOptions {
  /** The message of each line, e.g. 'device connected'. */
  msg: string;
  /** What the summary line counts, e.g. 'device connects': "N more device connects in the last second". */
  plural: string;
  /** Lines per second in the long run. */
  perSecond: number;
  /** Lines that may come at once after a quiet spell. */
  burst: number;
  now?: () => number;
  /** Runs `fn` after `ms`; injected by tests that drive time. */
  schedule?: (fn: () => void, ms: number) => void;
}

const SUMMARY_INTERVAL_MS = 1000;

function scheduleUnref(fn: () => void, ms: number): void {
  setTimeout(fn, ms).unref();
}

/**
 * One info line per event while a token bucket allows it; past that, events
 * are only counted, and one summary line a second says how many were left
 * out. A reconnect storm of 100 000 devices then writes `burst` lines and
 * one line a second, instead of 100 000 lines that would slow the hub down
 * exactly when it is busiest and push everything else out of the log.
 */
export class RateLimitedLog {
  private tokens: number;
  private refilledAt: number;
  private suppressed = 0;
  private summaryPending = false;
  private readonly now: () => number;
  private readonly schedule: (fn: () => void, ms: number) => void;

  constructor(
    private readonly log: Logger,
    private readonly options: RateLimitedLogOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.schedule = options.schedule ?? scheduleUnref;
    this.tokens = options.burst;
    this.refilledAt = this.now();
  }

  info(fields: Record<string, unknown>): void {
    const now = this.now();
    this.tokens = Math.min(this.options.burst, this.tokens + ((now - this.refilledAt) / 1000) * this.options.perSecond);
    this.refilledAt = now;
    if (this.tokens >= 1) {
      this.tokens--;
      this.log.info(fields, this.options.msg);
      return;
    }
    this.suppressed++;
    if (!this.summaryPending) {
      this.summaryPending = true;
      this.schedule(() => this.summarize(), SUMMARY_INTERVAL_MS);
    }
  }

  private summarize(): void {
    this.summaryPending = false;
    const suppressed = this.suppressed;
    this.suppressed = 0;
    if (suppressed === 0) return;
    this.log.info({ suppressed, event: this.options.msg }, `${suppressed} more ${this.options.plural} in the last second`);
  }
}
