/**
 * Checks per-device telemetry sequences as a cloud application sees them:
 * every sequence number should arrive once, in order. Gaps are remembered so
 * a late arrival counts as out of order rather than lost.
 */
export class SequenceChecker {
  private readonly next = new Map<number, number>();
  private readonly missing = new Map<number, Set<number>>();
  delivered = 0;
  duplicates = 0;
  outOfOrder = 0;

  record(deviceIndex: number, seq: number): void {
    const expected = this.next.get(deviceIndex) ?? 1;
    if (seq === expected) {
      this.delivered++;
      this.next.set(deviceIndex, seq + 1);
      return;
    }
    if (seq > expected) {
      this.delivered++;
      let gaps = this.missing.get(deviceIndex);
      if (gaps === undefined) this.missing.set(deviceIndex, (gaps = new Set()));
      for (let s = expected; s < seq; s++) gaps.add(s);
      this.next.set(deviceIndex, seq + 1);
      return;
    }
    const gaps = this.missing.get(deviceIndex);
    if (gaps?.delete(seq)) {
      this.delivered++;
      this.outOfOrder++;
    } else {
      this.duplicates++;
    }
  }

  /** Sequence numbers skipped and never filled in. */
  get gaps(): number {
    let total = 0;
    for (const gaps of this.missing.values()) total += gaps.size;
    return total;
  }

  /** Highest sequence number seen from a device, 0 if none. */
  highest(deviceIndex: number): number {
    return (this.next.get(deviceIndex) ?? 1) - 1;
  }
}
