import { Duplex } from 'node:stream';

/** The session side of an in-process connection to the embedded broker. */
export interface BrokerPipeOwner {
  /** Bytes the broker wrote for the device; call `done` when the broker may write more. */
  fromBroker(chunk: Buffer, done: () => void): void;
  /** The broker read everything pushed so far: held credit may be returned. */
  brokerReadable(): void;
  /** The broker closed or dropped the connection. */
  brokerClosed(): void;
}

/**
 * A Duplex handed to `aedes.handle()` in place of a socket: what the session
 * pushes the broker reads as client bytes, and what the broker writes goes
 * straight back to the session. No socket per device.
 */
export class BrokerPipe extends Duplex {
  private closedNotified = false;

  constructor(private readonly owner: BrokerPipeOwner) {
    super({ readableHighWaterMark: 64 * 1024, writableHighWaterMark: 64 * 1024 });
  }

  override _read(): void {
    this.owner.brokerReadable();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.owner.fromBroker(chunk, callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.notifyClosed();
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.notifyClosed();
    callback(error);
  }

  private notifyClosed(): void {
    if (this.closedNotified) return;
    this.closedNotified = true;
    this.owner.brokerClosed();
  }
}
