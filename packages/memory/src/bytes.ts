/** Where the in-memory broker keeps message bodies (see {@link ByteStore}). */

/** Where an entry's body lies: `size` bytes at `at` in `bytes`. */
export interface StoredBytes {
  readonly bytes: Buffer;
  readonly at: number;
  readonly size: number;
}

const SLAB_BYTES = 64 * 1024;

/**
 * Copies bytes into shared 64 KiB slabs: a copy is a place in a slab, not an `ArrayBuffer` of its
 * own (which costs ~10× more for the small bodies of most events). A slab is freed once no entry
 * or view into it is referenced. Bodies larger than 4 KiB get a buffer of their own.
 */
export class ByteStore {
  /** The slab being filled; zero-filled, so no view into it shows earlier contents of the heap. */
  private slab = Buffer.alloc(SLAB_BYTES);
  private used = 0;
  /** Where the last {@link ByteStore.put} stored its bytes (the slab then, or a buffer of their own). */
  last: Buffer = this.slab;

  /** Stores a copy of `source`; returns its offset in {@link ByteStore.last}. */
  put(source: Uint8Array): number {
    const n = source.byteLength;
    if (n > 4096) {
      this.last = Buffer.from(source);
      return 0;
    }
    const at = this.reserve(n);
    this.slab.set(source, at);
    return at;
  }

  /** A copy of `entry`'s body: a view of its own into a slab (Buffer.copy, no view of the source). */
  copyOut(entry: StoredBytes): Uint8Array {
    const n = entry.size;
    if (n > 4096) return new Uint8Array(entry.bytes.subarray(entry.at, entry.at + n));
    const at = this.reserve(n);
    const slab = this.slab;
    // Within one slab (a message delivered soon after it was stored) `copyWithin` needs no view
    // of the source; across slabs a plain view is cheaper than the Buffer `Buffer.copy` makes.
    const from = entry.bytes;
    if (from === slab) slab.copyWithin(at, entry.at, entry.at + n);
    else slab.set(new Uint8Array(from.buffer, from.byteOffset + entry.at, n), at);
    return new Uint8Array(slab.buffer, slab.byteOffset + at, n);
  }

  private reserve(n: number): number {
    if (this.used + n > SLAB_BYTES) {
      this.slab = Buffer.alloc(SLAB_BYTES);
      this.used = 0;
    }
    this.last = this.slab;
    const at = this.used;
    this.used += n;
    return at;
  }
}
