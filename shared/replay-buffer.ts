import { EdgemuxError } from './errors.js';

/**
 * The bytes of a stream that were sent but may not have reached the peer.
 * Entries are whole DATA payloads, so every offset the peer can report is
 * an entry boundary; resuming resends exactly the entries past it.
 */
export class ReplayBuffer {
  private entries: Buffer[] = [];
  private head = 0;
  /** Stream offset of the first byte of entries[head]. */
  private baseOffset = 0;
  private held = 0;

  /** Bytes held for replay. */
  get bytes(): number {
    return this.held;
  }

  /** Offset just past the last byte appended. */
  get endOffset(): number {
    return this.baseOffset + this.held;
  }

  append(payload: Buffer): void {
    this.entries.push(payload);
    this.held += payload.length;
  }

  /** Forget everything before `offset`: the peer has it. */
  releaseUpTo(offset: number): void {
    while (this.head < this.entries.length && this.baseOffset + this.entries[this.head].length <= offset) {
      const entry = this.entries[this.head];
      this.baseOffset += entry.length;
      this.held -= entry.length;
      this.head++;
    }
    if (this.head === this.entries.length) {
      // Nothing left: drop the array, so an idle stream pins no batch buffer.
      if (this.head > 0) this.entries = [];
      this.head = 0;
    } else if (this.head > 64 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head);
      this.head = 0;
    }
    if (this.baseOffset < offset && this.head < this.entries.length) {
      throw new EdgemuxError('E_STREAM_PROTOCOL', `offset ${offset} falls inside a payload (base ${this.baseOffset})`);
    }
  }

  /** True when a replay may start at `offset`: held, and the end of a payload (docs/protocol.md 11.8). */
  canReplayFrom(offset: number): boolean {
    if (offset < this.baseOffset || offset > this.endOffset) return false;
    let at = this.baseOffset;
    for (let i = this.head; i < this.entries.length && at < offset; i++) at += this.entries[i].length;
    return at === offset;
  }

  /** Calls `send` for each payload from `offset` on, in order, letting it swap in the copy it keeps. */
  replayFrom(offset: number, send: (payload: Buffer) => Buffer): void {
    if (offset < this.baseOffset || offset > this.endOffset) {
      throw new EdgemuxError('E_STREAM_PROTOCOL', `cannot replay from ${offset}: holding [${this.baseOffset}, ${this.endOffset}]`);
    }
    this.releaseUpTo(offset);
    for (let i = this.head; i < this.entries.length; i++) this.entries[i] = send(this.entries[i]);
  }

  clear(): void {
    this.baseOffset += this.held;
    this.held = 0;
    this.entries = [];
    this.head = 0;
  }
}
