/**
 * The last N lines, kept as bytes outside the JavaScript heap.
 *
 * Why: the feed keeps the last 1,000 decision lines. Kept as strings (and their event objects),
 * every decision outlived a scavenge or two, so the young generation copied and promoted about
 * 5 KiB per call and the old generation filled with lines to mark and compact: on plain HTTP
 * that was a quarter of the proxy's CPU per request (`npm run bench -- datapath --profile`,
 * README "Performance"). Here a line is copied once into one preallocated buffer; nothing of it
 * stays on the heap, so nothing survives a scavenge.
 *
 * Bounded by count (`capacity`) and by bytes (`byteSize`): a line that needs the space of older
 * ones pushes them out first, so the ring may hold fewer than `capacity` lines when lines are
 * long. A line longer than the whole buffer is counted and not kept.
 */

export class LineRing {
  private readonly bytes: Buffer;
  private readonly starts: Int32Array;
  /** -1: the line was too long to keep. */
  private readonly lengths: Int32Array;
  private readonly ats: Float64Array;
  /** Where the next line goes. */
  private head = 0;
  /** Lines pushed since the start: the newest line's sequence number (1, 2, ...). */
  private pushed = 0;
  /** The sequence number of the oldest line still held. */
  private oldest = 1;

  constructor(
    readonly capacity: number,
    byteSize: number,
  ) {
    // Touched now (filled), not as lines arrive: a fixed footprint from the start, not memory
    // that seems to grow with the first calls.
    this.bytes = Buffer.allocUnsafeSlow(byteSize).fill(0);
    this.starts = new Int32Array(capacity);
    this.lengths = new Int32Array(capacity);
    this.ats = new Float64Array(capacity);
  }

  /** The newest line's sequence number (0 before any). */
  get count(): number {
    return this.pushed;
  }

  /** Sequence number of the oldest line held (greater than `count` when none is). */
  get first(): number {
    return this.oldest;
  }

  push(line: string, at: number): number {
    const seq = ++this.pushed;
    const slot = (seq - 1) % this.capacity;
    // The slot's previous line leaves by count.
    if (this.oldest <= seq - this.capacity) this.oldest = seq - this.capacity + 1;
    this.ats[slot] = at;
    const size = this.bytes.length;
    const n = Buffer.byteLength(line, 'utf8');
    if (n > size) {
      this.lengths[slot] = -1;
      return seq;
    }
    let start = this.head;
    let wrapFrom = size;
    if (start + n > size) {
      // Not enough room before the end: the tail stays unused and the line starts at 0.
      wrapFrom = start;
      start = 0;
    }
    // Lines are laid out in sequence order around the buffer, so the ones in the way are the
    // oldest: push them out, oldest first, until none overlaps [start, start + n) or the tail.
    while (this.oldest < seq) {
      const old = (this.oldest - 1) % this.capacity;
      const s = this.starts[old] as number;
      const len = this.lengths[old] as number;
      const inTheWay = len < 0 || s >= wrapFrom || (s < start + n && s + len > start);
      if (!inTheWay) break;
      this.oldest++;
    }
    this.bytes.write(line, start, n, 'utf8');
    this.starts[slot] = start;
    this.lengths[slot] = n;
    this.head = start + n;
    return seq;
  }

  /** The line `seq` and when it was pushed; null when it is no longer (or never was) held. */
  get(seq: number): { readonly line: string; readonly at: number } | null {
    if (seq < this.oldest || seq > this.pushed) return null;
    const slot = (seq - 1) % this.capacity;
    const len = this.lengths[slot] as number;
    if (len < 0) return null;
    const start = this.starts[slot] as number;
    return { line: this.bytes.toString('utf8', start, start + len), at: this.ats[slot] as number };
  }
}
