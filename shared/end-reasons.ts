/**
 * Why a stream or a tunnel ended: one set of codes for the CLOSE frame's
 * `code`, the `reason` field of logs and the `reason` label of metrics
 * (docs/errors.md lists them). Free text stays beside the code for people.
 */
export const END_CODES = [
  // a device's MQTT connection (agent)
  'device-disconnected',
  'device-lost',
  'keepalive-expired',
  'packet-too-large',
  // the broker side of a device (hub)
  'broker-closed',
  'broker-unavailable',
  'slow-consumer',
  'operator-disconnected',
  'drained',
  // admission of a stream's CONNECT (hub)
  'refused',
  'connect-timeout',
  // the close handshake and resumption
  'closed',
  'unknown-stream',
  'not-held',
  'resume-failed',
  'grace-expired',
  // whole processes and tunnels
  'shutdown',
  'peer-departed',
  'agent-restarted',
  'identity-in-use',
  'unsupported-version',
  'revoked',
  'certificate-refused',
  'protocol-error',
  'hello-timeout',
  'heartbeat-timeout',
  'transport-error',
  'transport-preferred',
  'peer-closed',
  // a CLOSE without a code (a peer from before codes) or with one this side does not know
  'unspecified',
] as const;

export type EndCode = (typeof END_CODES)[number];

const END_CODE_SET: ReadonlySet<string> = new Set(END_CODES);

export function isEndCode(value: unknown): value is EndCode {
  return typeof value === 'string' && END_CODE_SET.has(value);
}

/** The code a peer sent, as far as this side knows it. */
export function receivedEndCode(value: unknown): EndCode {
  return isEndCode(value) ? value : 'unspecified';
}

/** Counts ends by code, for the `reason` label of a metric. */
export class EndCounts {
  private readonly counts = new Map<EndCode, number>();

  add(code: EndCode): void {
    this.counts.set(code, (this.counts.get(code) ?? 0) + 1);
  }

  entries(): IterableIterator<[EndCode, number]> {
    return this.counts.entries();
  }
}
