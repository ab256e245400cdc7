import { Duplex } from 'node:stream';
import type { BrokerLink, BrokerLinkOwner } from './broker-link.js';

/**
 * A Duplex handed to `aedes.handle()` in place of a socket: what the session
 * pushes the broker reads as client bytes, and what the broker writes goes
 * straight back to the session. No socket per device.
 */
export class BrokerPipe extends Duplex implements BrokerLink {
  private closedNotified = false;

  constructor(private readonly owner: BrokerLinkOwner) {
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
