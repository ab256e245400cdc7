/**
 * Connects per second from one source address, as a token bucket holding one
 * second's worth: a device that reconnects in a tight loop (or a host that
 * opens connections to exhaust the agent) is refused while others go on.
 * Addresses are forgotten once their bucket is full again, so the table holds
 * only addresses active within the last second or so.
 */
const MAX_ADDRESSES = 10_000;

export class ConnectRate {
  private readonly buckets = new Map<string, { tokens: number; at: number; refusing: boolean }>();
  /** CONNECTs refused since start. */
  refused = 0;

  constructor(
    private readonly perSecond: number,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Takes one connect for `address`. Returns 'admit', 'refuse', or
   * 'refuse-first' for the first refusal of an episode (the one to log).
   */
  take(address: string): 'admit' | 'refuse' | 'refuse-first' {
    const now = this.now();
    let bucket = this.buckets.get(address);
    if (bucket === undefined) {
      if (this.buckets.size >= MAX_ADDRESSES) this.prune(now);
      bucket = { tokens: this.perSecond, at: now, refusing: false };
      this.buckets.set(address, bucket);
    } else {
      bucket.tokens = Math.min(this.perSecond, bucket.tokens + ((now - bucket.at) * this.perSecond) / 1000);
      bucket.at = now;
    }
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      bucket.refusing = false;
      return 'admit';
    }
    this.refused++;
    if (bucket.refusing) return 'refuse';
    bucket.refusing = true;
    return 'refuse-first';
  }

  /** Drops buckets that have refilled (they would admit a connect anyway), then the oldest if still too many. */
  private prune(now: number): void {
    for (const [address, bucket] of this.buckets) {
      if (bucket.tokens + ((now - bucket.at) * this.perSecond) / 1000 >= this.perSecond) this.buckets.delete(address);
    }
    for (const address of this.buckets.keys()) {
      if (this.buckets.size < MAX_ADDRESSES) break;
      this.buckets.delete(address);
    }
  }
}
