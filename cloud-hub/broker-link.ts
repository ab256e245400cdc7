/**
 * A device's connection to its broker as the session sees it: the embedded
 * broker's in-process pipe or a socket to an external broker.
 */
export interface BrokerLink {
  /** Device bytes for the broker; null ends the connection once they are read. Returns false to hold back credit. */
  push(bytes: Buffer | null): boolean;
  destroy(): void;
  readonly destroyed: boolean;
  /** Device bytes accepted and not yet taken by the broker (or the kernel, for a socket). */
  readonly heldBytes: number;
}

/** What a link reports to the session that owns it. */
export interface BrokerLinkOwner {
  /** Bytes the broker wrote for the device; call `done` when the broker may write more. */
  fromBroker(chunk: Buffer, done: () => void): void;
  /** The broker read everything pushed so far: held credit may be returned. */
  brokerReadable(): void;
  /** The broker closed or dropped the connection. */
  brokerClosed(): void;
  /** No broker of the route could be reached: the device must be refused. */
  brokerUnavailable(reason: string): void;
}
