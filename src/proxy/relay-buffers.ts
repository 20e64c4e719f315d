/**
 * The memory a tunnel's upstream is read into: reused buffers instead of a new allocation per
 * read (tunnel.ts relays from them).
 *
 * Why: by default Node allocates 64 KiB for every read of a socket, trims it to what was read and
 * leaves it to the garbage collector. A tunnel moving a gigabyte a second makes some 15,000 of
 * those a second, and each costs twice over: glibc hands back pages it has trimmed, so every page
 * of relayed data is a page fault (measured after the peer bench's S1 and S2: about 210 faults per
 * MB relayed), and V8 counts the buffers as external memory, which starts a full mark-compact
 * every ~100 ms once the old generation's headroom is smaller than the bytes in flight (measured:
 * 70–90 mark-compacts in 8 s, half the throughput). Read into kept buffers, the relay allocates
 * nothing per read and touches no new page.
 *
 * How: Node's `onread` option reads a socket into a buffer we give, and asks for the buffer of
 * the next read after each one (`nextReadBuffer`, called by Node right after the read callback,
 * which decides it through `readNextInto`).
 * - Every upstream starts on one buffer shared by all of them. What lands there is copied out
 *   before it is written: a write the kernel does not take at once keeps pointing at its bytes,
 *   and the next read, of any socket, overwrites the shared buffer.
 * - A read that fills the shared buffer (a sender with more waiting) gives its socket a buffer of
 *   its own. What lands there is written as it is, and the socket reads again only once the
 *   client has taken all of it (tunnel.ts: no bytes pending, or 'drain').
 * - A read from its own buffer that is shorter than the client's high-water mark is copied too (a
 *   write under the mark that the kernel leaves pending gets no 'drain' to say it is done), and a
 *   read under half the buffer gives the buffer back once no write points into it: the socket
 *   returns to the shared one, so an idle tunnel holds no buffer.
 * - At most `MAX_OWNED_BUFFERS` are out at once (16 MiB); beyond that, sockets stay on the shared
 *   buffer and copy.
 */

/** What one read takes at most: Node's own read size. */
export const READ_BUFFER_BYTES = 64 * 1024;
/** Buffers out at once (16 MiB): the bulk tunnels relayed without a copy. */
export const MAX_OWNED_BUFFERS = 256;
/** Given-back buffers kept for the next bulk tunnel rather than left to the collector. */
const MAX_FREE_BUFFERS = 32;

const shared: Buffer = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
const free: Buffer[] = [];
let owned = 0;
/** Buffers taken since start (a socket going from the shared buffer to its own). */
let lent = 0;
/** The buffer the read that ends now goes on with; Node asks for it right after the read callback. */
let next: Buffer = shared;

/** The buffer every socket starts on, and returns to. */
export function sharedReadBuffer(): Buffer {
  return shared;
}

/**
 * `onread.buffer`: Node calls it when the socket's handle is set up and after every read
 * callback, with no argument and no `this`; the callback has just said what it should be.
 */
export function nextReadBuffer(): Buffer {
  const buffer = next;
  next = shared;
  return buffer;
}

/** Called by a read callback, last: the socket's next read goes into `buffer`. */
export function readNextInto(buffer: Buffer): void {
  next = buffer;
}

/** A buffer of the socket's own, or null when `MAX_OWNED_BUFFERS` are out. */
export function takeOwnedBuffer(): Buffer | null {
  if (owned >= MAX_OWNED_BUFFERS) return null;
  owned++;
  lent++;
  return free.pop() ?? Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
}

/** Gives a buffer back; only once nothing (a read, a pending write) points into it. */
export function giveBackOwnedBuffer(buffer: Buffer): void {
  owned--;
  if (free.length < MAX_FREE_BUFFERS) free.push(buffer);
}

/** Buffers out now, kept for reuse, and lent since start. */
export function relayBufferCounts(): { owned: number; free: number; lent: number } {
  return { owned, free: free.length, lent };
}
