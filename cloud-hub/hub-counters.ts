/**
 * Why the hub turned something away. One set of names, used in logs, in the
 * admin API and as the `reason` label of edgemux_hub_refusals_total.
 */
export type RefusalReason =
  | 'protocol-violation'
  | 'connect-mismatch'
  | 'connect-timeout'
  | 'client-id-too-long'
  | 'namespace'
  | 'mqtt5-on-embedded'
  | 'agent-device-limit'
  | 'no-broker'
  | 'agent-draining'
  | 'unknown-session'
  | 'tunnel-tls'
  | 'tunnel-identity'
  | 'tunnel-identity-in-use'
  | 'tunnel-protocol';

/**
 * Hub-wide totals, counted where things happen so a scrape or an API call
 * reads them without walking every session. Plain numbers: the data path
 * adds to them and allocates nothing.
 */
export class HubCounters {
  messagesToBroker = 0;
  bytesToBroker = 0;
  messagesToDevice = 0;
  bytesToDevice = 0;
  /** Streams that continued on another tunnel instead of ending. */
  resumes = 0;
  /** Sessions cut off because their device stopped reading. */
  slowConsumerCutoffs = 0;
  readonly refusals = new Map<RefusalReason, number>();

  refused(reason: RefusalReason): void {
    this.refusals.set(reason, (this.refusals.get(reason) ?? 0) + 1);
  }

  refusalsByReason(): Record<string, number> {
    return Object.fromEntries(this.refusals);
  }
}
