import { Duplex } from 'node:stream';
import type { BrokerLink, BrokerLinkOwner } from './broker-link.js';

/** Bytes handed to the broker per turn of the event loop. */
const BATCH_BYTES = 8 * 1024;
/** Device bytes waiting here above which the session holds back credit. */
const QUEUE_LIMIT = 64 * 1024;

/**
 * A Duplex handed to `aedes.handle()` in place of a socket: what the session
 * pushes the broker reads as client bytes, and what the broker writes goes
 * straight back to the session. No socket per device.
 *
 * Device bytes are handed over in batches, each on its own tick: aedes reads
 * the next batch from inside the completion of the last, so a long backlog
 * handed over at once would be processed in one ever-deeper call chain (seen
 * to overflow the stack with a few thousand queued publishes).
 */
export class BrokerPipe extends Duplex implements BrokerLink {
  private closedNotified = false;
  private queue: Buffer[] = [];
  private queueHead = 0;
  private queuedBytes = 0;
  private ending = false;
  private endPushed = false;
  private wanted = false;
  private flushScheduled = false;
  private heldBack = false;
  private readonly flushBound = (): void => this.flush();

  constructor(private readonly owner: BrokerLinkOwner) {
    super({ readableHighWaterMark: BATCH_BYTES, writableHighWaterMark: 64 * 1024 });
  }

  get heldBytes(): number {
    return this.queuedBytes;
  }

  /** Device bytes for the broker (null: end once they are read). Returns false to hold back credit. */
  override push(bytes: Buffer | null): boolean {
    if (bytes === null) {
      this.ending = true;
    } else if (!this.ending) {
      this.queue.push(bytes);
      this.queuedBytes += bytes.length;
    }
    if (this.wanted) this.scheduleFlush();
    if (this.queuedBytes < QUEUE_LIMIT) return true;
    this.heldBack = true;
    return false;
  }

  override _read(): void {
    this.wanted = true;
    this.scheduleFlush();
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

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    process.nextTick(this.flushBound);
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.destroyed) return;
    let handed = 0;
    while (this.queueHead < this.queue.length && handed < BATCH_BYTES) {
      const bytes = this.queue[this.queueHead++];
      handed += bytes.length;
      this.queuedBytes -= bytes.length;
      if (!super.push(bytes)) {
        this.wanted = false;
        break;
      }
    }
    if (this.queueHead === this.queue.length) {
      this.queue.length = 0;
      this.queueHead = 0;
      if (this.ending && !this.endPushed) {
        this.endPushed = true;
        super.push(null);
      }
    } else if (this.queueHead > 256) {
      this.queue.splice(0, this.queueHead);
      this.queueHead = 0;
    }
    if (this.queueHead < this.queue.length && this.wanted) {
      // More than one batch waits: the rest goes on a later turn.
      setImmediate(this.flushBound);
      this.flushScheduled = true;
    }
    if (this.heldBack && this.queuedBytes < QUEUE_LIMIT / 2) {
      this.heldBack = false;
      this.owner.brokerReadable();
    }
  }

  private notifyClosed(): void {
    if (this.closedNotified) return;
    this.closedNotified = true;
    this.owner.brokerClosed();
  }
}
