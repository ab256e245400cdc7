/**
 * Collects repeated measurements and reports them as medians with their
 * spread: the range (min–max) and its size relative to the median.
 */

export type Better = 'higher' | 'lower' | 'none';

export interface Series {
  scenario: string;
  /** The case within a scenario, e.g. "qos1 100 devices". */
  case: string;
  /** Which system: "chain", "aedes direct", "mosquitto bridge", ... */
  variant: string;
  metric: string;
  unit: string;
  better: Better;
  values: number[];
}

export interface Summary extends Series {
  median: number;
  min: number;
  max: number;
  /** (max − min) / median, in percent. */
  spreadPct: number;
}

export interface Note {
  scenario: string;
  text: string;
}

export function median(values: number[]): number {
  const finite = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (finite.length === 0) return NaN;
  const mid = finite.length >> 1;
  return finite.length % 2 === 1 ? finite[mid] : (finite[mid - 1] + finite[mid]) / 2;
}

export function summarize(series: Series): Summary {
  const finite = series.values.filter(Number.isFinite);
  const med = median(finite);
  const min = finite.length ? Math.min(...finite) : NaN;
  const max = finite.length ? Math.max(...finite) : NaN;
  return { ...series, median: med, min, max, spreadPct: med !== 0 ? ((max - min) / Math.abs(med)) * 100 : 0 };
}

export class Results {
  private readonly series = new Map<string, Series>();
  readonly notes: Note[] = [];
  readonly skipped: Note[] = [];
  /** Anything else worth keeping in the JSON file (ramps, profiles, reasons). */
  readonly details: Record<string, unknown[]> = {};

  add(scenario: string, caseName: string, variant: string, metric: string, unit: string, better: Better, value: number): void {
    const key = [scenario, caseName, variant, metric].join('\u0000');
    let s = this.series.get(key);
    if (s === undefined) {
      s = { scenario, case: caseName, variant, metric, unit, better, values: [] };
      this.series.set(key, s);
    }
    s.values.push(value);
  }

  get(scenario: string, caseName: string, variant: string, metric: string): Summary | null {
    const s = this.series.get([scenario, caseName, variant, metric].join('\u0000'));
    return s === undefined ? null : summarize(s);
  }

  note(scenario: string, text: string): void {
    this.notes.push({ scenario, text });
  }

  skip(scenario: string, text: string): void {
    this.skipped.push({ scenario, text });
  }

  detail(scenario: string, value: unknown): void {
    (this.details[scenario] ??= []).push(value);
  }

  summaries(): Summary[] {
    return [...this.series.values()].map(summarize);
  }
}

export function formatNumber(value: number): string {
  if (!Number.isFinite(value)) return 'n/a';
  const abs = Math.abs(value);
  if (abs >= 1000) return Math.round(value).toLocaleString('en-US');
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 1) return value.toFixed(2);
  return value.toFixed(3);
}

/** A plain-text table, columns padded; the first row is the header. */
export function renderTable(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  const line = (r: string[]): string => r.map((cell, c) => (c >= 4 ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join('  ');
  const out = [line(rows[0]), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.slice(1).map(line)];
  return out.join('\n');
}

export function resultsTable(summaries: Summary[]): string {
  const rows = [['scenario', 'case', 'variant', 'metric', 'median', 'min', 'max', 'spread', 'n']];
  for (const s of summaries) {
    rows.push([
      s.scenario,
      s.case,
      s.variant,
      `${s.metric} (${s.unit})`,
      formatNumber(s.median),
      formatNumber(s.min),
      formatNumber(s.max),
      Number.isFinite(s.spreadPct) ? `${s.spreadPct.toFixed(0)}%` : 'n/a',
      String(s.values.length),
    ]);
  }
  return renderTable(rows);
}
