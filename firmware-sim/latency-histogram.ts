import { build, decodeFromCompressedBase64, encodeIntoCompressedBase64, type Histogram } from 'hdr-histogram-js';

/**
 * Latency recorder in milliseconds over an HDR histogram stored in microseconds,
 * so sub-millisecond loopback latencies keep three significant digits.
 * The pure-JS backend is used because the WebAssembly one needs explicit
 * initialisation and buys nothing at simulator recording rates.
 */
export class LatencyHistogram {
  private readonly histogram: Histogram = build({
    useWebAssembly: false,
    lowestDiscernibleValue: 1,
    numberOfSignificantValueDigits: 3,
  });

  /** Negative samples (clock steps between processes) are clamped to zero. */
  record(ms: number): void {
    if (!Number.isFinite(ms)) return;
    this.histogram.recordValue(Math.max(0, Math.round(ms * 1000)));
  }

  /** Value at percentile `p` (0–100) in ms; 0 when nothing was recorded. */
  percentile(p: number): number {
    if (this.histogram.totalCount === 0) return 0;
    return this.histogram.getValueAtPercentile(p) / 1000;
  }

  get count(): number {
    return this.histogram.totalCount;
  }

  reset(): void {
    this.histogram.reset();
  }

  /**
   * Compressed HDR encoding (a few KB), so another process can merge the
   * full distribution: percentiles of separate processes cannot be combined.
   */
  encode(): string {
    return encodeIntoCompressedBase64(this.histogram);
  }

  /** Adds the samples of an encode() from elsewhere, keeping exact percentiles of the union. */
  addEncoded(encoded: string): void {
    this.histogram.add(decodeFromCompressedBase64(encoded, 32, false));
  }
}
