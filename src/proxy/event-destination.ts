/**
 * Where event lines go, in order, through one synchronous write(2) per batch.
 *
 * `write` (pino's lines, refusals, errors, CONNECT decisions) goes out at once, after anything
 * pending. `defer` (the decision of a forwarded plain-HTTP request, closed lines) waits for the
 * end of the event-loop turn (or 64 KiB) and goes out with the rest of that turn's lines. So a
 * client never hears of a call before its decision line is written: a refusal or a CONNECT `200`
 * follows an immediate write, and an upstream's answer arrives in a later turn than the
 * deferred decision of the request it answers.
 *
 * Why not pino's destinations: a synchronous one costs a write(2) per line, two per call, which
 * was a sixth of the proxy's CPU on keep-alive HTTP; an asynchronous one holds lines for as
 * long as the disk or pipe is slow and loses them all on an unhandled signal. Here at most one
 * turn's deferred lines are held: SIGTERM/SIGINT (serve.ts), `flush()` and process exit write
 * them, and underneath sits pino's synchronous SonicBoom (which retries EAGAIN on a full
 * non-blocking stdout). A SIGKILL or a native crash can lose the current turn's deferred lines.
 */
import pino from 'pino';
import type { DestinationStream } from 'pino';

const FLUSH_AT = 64 * 1024;
const open = new Set<BatchedDestination>();
let exitHook = false;

export interface LineSink {
  write(chunk: string): unknown;
}

export class BatchedDestination implements DestinationStream {
  private pending = '';
  private scheduled = false;

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

  /** Writes `line` at the end of this event-loop turn, with the turn's other lines. */
  defer(line: string): void {
    this.pending += line;
    if (this.pending.length >= FLUSH_AT) this.flushSync();
    else if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.onTurnEnd);
    }
  }

  private readonly onTurnEnd = (): void => {
    this.scheduled = false;
    this.flushSync();
  };

  /** Writes every pending line now. */
  flushSync(): void {
    if (this.pending === '') return;
    const out = this.pending;
    this.pending = '';
    this.target.write(out);
  }

  /** pino's `logger.flush(cb)` calls this. */
  flush(cb?: (err?: Error) => void): void {
    this.flushSync();
    cb?.();
  }

  /** Writes what is pending and stops flushing at exit (the target stays open). */
  close(): void {
    this.flushSync();
    open.delete(this);
  }
}

/** The event destination of `serve`: batched lines over a synchronous write to `fd` (stdout). */
export function createEventDestination(fd = 1): BatchedDestination {
  return new BatchedDestination(pino.destination({ dest: fd, sync: true }));
}
