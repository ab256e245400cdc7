import { EdgemuxError } from './errors.js';

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "90s", "15m", "12h", "30d", "500ms" → milliseconds; throws E_CONFIG naming `key`. */
export function parseDuration(value: string, key: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(value.trim());
  const ms = match ? Number(match[1]) * UNIT_MS[match[2]] : NaN;
  if (!match || !(ms > 0)) {
    throw new EdgemuxError('E_CONFIG', `${key}: expected a duration such as 90s, 15m, 12h or 30d (got ${JSON.stringify(value)})`);
  }
  return ms;
}
