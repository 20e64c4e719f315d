/**
 * Where event lines go, in order, through one synchronous write(2) per batch.
 *
 * `write` (pino's lines, refusals, errors, CONNECT decisions) goes out at once, after anything
 * pending. `defer` (the decision of a forwarded plain-HTTP request, closed lines) joins the
 * pending batch, which goes out with the next immediate write, when a caller needs one of its
 * lines out (`ensureWritten`, before a client hears of that call), at 64 KiB, or at the latest
 * `DEFER_MS` later. So a client never hears of a call before its decision line is written, and
 * a busy proxy writes one batch for many calls.
 *
 * Why not pino's destinations: a synchronous one costs a write(2) per line, two per call; an asynchronous one holds lines for as
 * long as the disk or pipe is slow and loses them all on an unhandled signal. Why not a flush at
 * the end of each event-loop turn (setImmediate): on new-connection-per-call traffic there is
 * about one call per turn, so it batched nothing and cost about 25 µs of a CONNECT's 500 (measured
 * before JIT warm-up). Here at most `DEFER_MS` of deferred lines are held: SIGTERM/SIGINT (serve.ts),
 * `flush()` and process exit write them, and underneath each batch is one synchronous write to
 * the file descriptor (FdWriter). A SIGKILL or a native crash can lose the deferred lines of the
 * last `DEFER_MS`.
 */
import { writeSync } from 'node:fs';
import type { DestinationStream } from 'pino';

const FLUSH_AT = 64 * 1024;
/** The longest a deferred line waits. */
export const DEFER_MS = 20;
const open = new Set<BatchedDestination>();
let exitHook = false;

export interface LineSink {
  write(chunk: string): unknown;
}

export class BatchedDestination implements DestinationStream {
  private pending = '';
  private timer: NodeJS.Timeout | null = null;
  /** Deferred lines so far, and how many of them are written: `defer` hands out tickets. */
  private deferred = 0;
  private writtenUpTo = 0;

  constructor(private readonly target: LineSink) {
    open.add(this);
    if (!exitHook) {
      exitHook = true;
      process.once('exit', () => {
        for (const d of open) d.flushSync();
      });
    }
  }

  /** Writes `line` now, after anything pending. */
  write(line: string): void {
    if (this.pending === '') this.target.write(line);
    else {
      this.pending += line;
      this.flushSync();
    }
  }

  /** Adds `line` to the pending batch; the ticket says when it is out (`ensureWritten`). */
  defer(line: string): number {
    this.pending += line;
    const ticket = ++this.deferred;
    if (this.pending.length >= FLUSH_AT) this.flushSync();
    else if (this.timer === null) this.timer = setTimeout(this.onTimer, DEFER_MS).unref();
    return ticket;
  }

  /** Writes the pending batch if the line of `ticket` is still in it. */
  ensureWritten(ticket: number): void {
    if (ticket > this.writtenUpTo) this.flushSync();
  }

  private readonly onTimer = (): void => {
    this.timer = null;
    this.flushSync();
  };

  /** Writes every pending line now. */
  flushSync(): void {
    if (this.pending === '') return;
    const out = this.pending;
    this.pending = '';
    this.writtenUpTo = this.deferred;
    // The timer is left to run out (it finds little or nothing): clearing and setting one per
    // batch would cost what the batching saves.
    this.target.write(out);
  }

  /** pino's `logger.flush(cb)` calls this. */
  flush(cb?: (err?: Error) => void): void {
    this.flushSync();
    cb?.();
  }

  /** Writes what is pending and stops flushing at exit (the target stays open). */
  close(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.flushSync();
    open.delete(this);
  }
}

/**
 * Writes each batch to a file descriptor synchronously and whole: a partial write goes on from
 * where it stopped, and a full non-blocking pipe (EAGAIN) is waited for, not dropped. When the
 * reader has gone (EPIPE) nothing more is written and the proxy goes on serving, as pino's own
 * destination did; other errors are thrown to the writer, as they were.
 *
 * Why not pino's SonicBoom in sync mode, which did this before: around every write it measured
 * the string (`Buffer.byteLength`) and copied it into a new Buffer again after the write: three
 * passes over each batch and an allocation, where this encodes it once into a buffer kept for
 * the purpose.
 */
export class FdWriter implements LineSink {
  /** Where a batch is encoded: one buffer for every write, so a batch allocates nothing. */
  private readonly scratch = Buffer.allocUnsafeSlow(SCRATCH_BYTES);

  /** The reader went away (EPIPE): later lines have nowhere to go. */
  private readerGone = false;

  constructor(private readonly fd: number) {}

  write(text: string): void {
    if (this.readerGone) return;
    // A UTF-16 unit is at most 3 UTF-8 bytes: a batch that may not fit gets its own buffer.
    const bytes =
      text.length * 3 <= this.scratch.length ? this.scratch.subarray(0, this.scratch.write(text, 0, 'utf8')) : Buffer.from(text, 'utf8');
    for (let offset = 0; offset < bytes.length;) {
      try {
        const written = writeSync(this.fd, bytes, offset, bytes.length - offset);
        if (written === 0) Atomics.wait(PAUSE, 0, 0, FULL_WAIT_MS);
        offset += written;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EPIPE') {
          this.readerGone = true;
          return;
        }
        if (code !== 'EAGAIN' && code !== 'EBUSY') throw err;
        // The reader is behind: wait for it (the lines are the record; they are not dropped).
        Atomics.wait(PAUSE, 0, 0, FULL_WAIT_MS);
      }
    }
  }
}

/** Batches are flushed at 64 KiB: most fit the scratch buffer whatever their characters. */
const SCRATCH_BYTES = 256 * 1024;
/** How long a write waits for a full pipe to drain before trying again. */
const FULL_WAIT_MS = 2;
const PAUSE = new Int32Array(new SharedArrayBuffer(4));

/** The event destination of `serve`: batched lines over a synchronous write to `fd` (stdout). */
export function createEventDestination(fd = 1): BatchedDestination {
  return new BatchedDestination(new FdWriter(fd));
}
