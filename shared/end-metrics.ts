import { Counter, type Registry } from 'prom-client';
import type { EndCounts } from './end-reasons.js';

/** A counter labelled `reason` with the end codes of docs/errors.md, read from counts kept off the data path. */
export function endCounter(registry: Registry, name: string, help: string, read: () => EndCounts): void {
  const seen = new Map<string, number>();
  new Counter({
    name,
    help,
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      for (const [reason, now] of read().entries()) {
        this.inc({ reason }, Math.max(0, now - (seen.get(reason) ?? 0)));
        seen.set(reason, now);
      }
    },
  });
}
