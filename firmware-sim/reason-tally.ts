/**
 * Counts by reason, with a bound on distinct reasons: a fleet losing 100k
 * devices has few distinct causes, and a tally that crosses process
 * boundaries every second must stay small.
 */
export class ReasonTally {
  static readonly MAX_DISTINCT = 20;
  private readonly counts = new Map<string, number>();

  add(reason: string, count = 1): void {
    const key = this.counts.has(reason) || this.counts.size < ReasonTally.MAX_DISTINCT ? reason : 'other';
    this.counts.set(key, (this.counts.get(key) ?? 0) + count);
  }

  addAll(tally: Record<string, number>): void {
    for (const [reason, count] of Object.entries(tally)) this.add(reason, count);
  }

  toJSON(): Record<string, number> {
    return Object.fromEntries(this.counts);
  }
}
