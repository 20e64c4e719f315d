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
 * `flush()` and process exit write them, and underneath sits pino's synchronous SonicBoom
 * (which retries EAGAIN on a full non-blocking stdout). A SIGKILL or a native crash can lose
 * the deferred lines of the last `DEFER_MS`.
 */
import pino from 'pino';
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

/** The event destination of `serve`: batched lines over a synchronous write to `fd` (stdout). */
export function createEventDestination(fd = 1): BatchedDestination {
  return new BatchedDestination(pino.destination({ dest: fd, sync: true }));
}
