/** Protocol defaults both sides agree on unless configured otherwise (docs/protocol.md). */
export const TUNNEL_DEFAULTS = {
  /** Per-stream credit window in bytes: enough for a burst of ~1000 small publishes per device. */
  streamWindow: 64 * 1024,
  /** Largest frame payload; one MQTT packet never spans frames, so this caps packet size too. */
  maxFramePayload: 1024 * 1024,
  heartbeatMs: 5_000,
  deadAfterMs: 15_000,
  /** Tunnel socket buffer above which streams pause their sources. */
  highWaterBytes: 1024 * 1024,
  helloTimeoutMs: 10_000,
  /**
   * How long a closing tunnel waits for the peer to read its last frames
   * (CLOSEs, GOODBYE) and close in turn before the socket is dropped: a
   * graceful stop stays bounded even when the peer has gone silent.
   */
  closeLingerMs: 2_000,
  /** How long a stream outlives its tunnel: devices and broker sessions stay up meanwhile. */
  resumeGraceMs: 60_000,
  /** Per device at the hub: broker output queued behind a device that does not read. */
  maxQueuedBytes: 4 * 1024 * 1024,
} as const;
