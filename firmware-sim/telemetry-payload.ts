/**
 * Telemetry payload codec. Layout, big endian:
 *   0..7   float64  send time in ms since the Unix epoch (performance clock)
 *   8..11  uint32   device index
 *   12..15 uint32   per-device sequence number, starting at 1
 *   16..   zero padding up to the configured size
 * The send time is `performance.timeOrigin + performance.now()`, which is
 * monotonic within a process and comparable between processes on one host,
 * so a subscriber elsewhere on the machine can compute end-to-end latency.
 */

export const TELEMETRY_HEADER_BYTES = 16;

export interface TelemetryRecord {
  sentAtMs: number;
  deviceIndex: number;
  seq: number;
}

export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

/** Writes the header into `target`, leaving any bytes after it untouched. */
export function writeTelemetryHeader(target: Buffer, deviceIndex: number, seq: number, sentAtMs: number): void {
  target.writeDoubleBE(sentAtMs, 0);
  target.writeUInt32BE(deviceIndex >>> 0, 8);
  target.writeUInt32BE(seq >>> 0, 12);
}

export function encodeTelemetry(deviceIndex: number, seq: number, sentAtMs: number, size: number): Buffer {
  const buf = Buffer.alloc(Math.max(TELEMETRY_HEADER_BYTES, size));
  writeTelemetryHeader(buf, deviceIndex, seq, sentAtMs);
  return buf;
}

export function decodeTelemetry(buf: Uint8Array): TelemetryRecord | null {
  if (buf.length < TELEMETRY_HEADER_BYTES) return null;
  const view = new DataView(buf.buffer, buf.byteOffset, TELEMETRY_HEADER_BYTES);
  return {
    sentAtMs: view.getFloat64(0),
    deviceIndex: view.getUint32(8),
    seq: view.getUint32(12),
  };
}
