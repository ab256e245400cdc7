/**
 * Splits a byte stream into whole length-prefixed units (MQTT packets,
 * tunnel frames). A subclass's `sizeAt` reads a unit's header at `offset` and returns the
 * unit's total size, or -1 while the header is incomplete; it throws on a
 * header that can never be valid. Units inside one chunk are handed out as
 * ranges of that chunk; only a unit straddling chunks is copied, once, into
 * a buffer of its size.
 */
export abstract class UnitSplitter {
  private partial: Buffer | null = null;
  private partialLength = 0;
  /** Size of the unit being assembled in `partial`; 0 while its header is incomplete. */
  private expected = 0;

  protected abstract sizeAt(buf: Buffer, offset: number): number;

  /** Bytes held for a unit that has not fully arrived. */
  get pendingBytes(): number {
    return this.partialLength;
  }

  protected split(chunk: Buffer, onUnit: (buf: Buffer, start: number, end: number) => void): void {
    let offset = 0;
    if (this.partial !== null) {
      if (this.expected === 0) {
        // Only a header's worth of bytes is ever held back here, so this copy is tiny.
        chunk = Buffer.concat([this.partial.subarray(0, this.partialLength), chunk]);
        this.partial = null;
        this.partialLength = 0;
      } else {
        const take = Math.min(this.expected - this.partialLength, chunk.length);
        chunk.copy(this.partial, this.partialLength, 0, take);
        this.partialLength += take;
        offset = take;
        if (this.partialLength < this.expected) return;
        const unit = this.partial;
        this.partial = null;
        this.partialLength = 0;
        this.expected = 0;
        onUnit(unit, 0, unit.length);
      }
    }
    while (offset < chunk.length) {
      const size = this.sizeAt(chunk, offset);
      if (size < 0) {
        this.partial = Buffer.from(chunk.subarray(offset));
        this.partialLength = this.partial.length;
        this.expected = 0;
        return;
      }
      if (offset + size <= chunk.length) {
        onUnit(chunk, offset, offset + size);
        offset += size;
      } else {
        this.partial = Buffer.allocUnsafe(size);
        chunk.copy(this.partial, 0, offset);
        this.partialLength = chunk.length - offset;
        this.expected = size;
        return;
      }
    }
  }
}
