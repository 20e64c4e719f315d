/**
 * While full collections come back to back, keeps 32 MiB of headroom above a small old generation
 * in the `serve` process, as `--heap-growing-percent` would, so that relaying bodies does not
 * turn into a full collection every ~150 ms.
 *
 * Why: Node reads a socket into a new 64 KiB buffer each time (the plain-HTTP path: undici's
 * upstream sockets and node:http's client sockets). V8 11.3 counts the buffer memory allocated
 * since the last mark-compact against the old generation's limit, and up to ~35 MiB of them are
 * in flight between the scavenges that free them. After a mark-compact V8 sets that limit from
 * the old generation's own allocation rate, which the proxy keeps low: about 16 MiB over a 13 MiB
 * old generation (factor 1.2–1.4, plus its minimum step and the new space). Once the proxy has
 * held traffic (the peer bench's 2,000 idle tunnels, S4), relaying a large body (S5) started a
 * mark-compact every ~150 ms: 24–26 in 4 s, 200–233 MB/s against 420–455 fresh. Held: 3–4, and
 * 265–408 MB/s (what remains is page faults, which the minimal forwarder pays there too).
 *
 * How: only while full collections come back to back (two within a second), the growing percent is
 * set from what each full collection left alive: 32 MiB of it, at most 300% (factor 4, V8's own
 * largest on hosts with a heap limit of 2 GiB or more); after a minute without one it goes back to
 * 0 (V8's own factor, which may well be larger when the old generation itself grows fast). Above 64
 * MiB the old generation is left to V8: its minimum step and factor give room enough there, and a
 * large heap should not be made to grow by a fixed share. Memory: an old generation of 13 MiB may
 * then grow to about 45 MiB before it is collected (V8 alone let it reach ~29). While held, the
 * percent replaces V8's own choice of factor, its careful modes too (near the heap limit, the
 * memory reducer); V8 still caps each limit halfway to the heap's maximum. An operator's own
 * `--heap-growing-percent` on the command line wins (Node 20 refuses it in NODE_OPTIONS; checked
 * there too): then nothing is changed.
 */
import { PerformanceObserver, constants } from 'node:perf_hooks';
import v8 from 'node:v8';
import { operatorGaveFlag } from './node-flags.js';

export const HEADROOM_BYTES = 32 * 1024 * 1024;
/** Factor 4: V8's largest growing factor (on hosts whose heap limit is 2 GiB or more; below, V8's own stays under 2). */
const MAX_PERCENT = 300;
/** Above this the old generation grows by V8's own factor. */
export const LARGEST_HELD_OLD_GENERATION = 64 * 1024 * 1024;

/** Whether the operator set the growing factor themselves. */
export function operatorSetHeapGrowing(execArgv: readonly string[], nodeOptions: string | undefined): boolean {
  return operatorGaveFlag(/^--heap[-_]growing[-_]percent\b/, execArgv, nodeOptions);
}

/** V8's old generation now: every space but the young generation's. */
export function oldGenerationBytes(): number {
  let bytes = 0;
  for (const space of v8.getHeapSpaceStatistics()) {
    if (space.space_name !== 'new_space' && space.space_name !== 'new_large_object_space') bytes += space.space_used_size;
  }
  return bytes;
}

/** The growing percent that leaves `headroomBytes` over an old generation of `oldBytes`; 0 is V8's own. */
export function growingPercentFor(oldBytes: number, headroomBytes = HEADROOM_BYTES): number {
  if (oldBytes <= 0 || oldBytes > LARGEST_HELD_OLD_GENERATION) return 0;
  return Math.min(MAX_PERCENT, Math.ceil((headroomBytes / oldBytes) * 100));
}

/** The running hold's stop, if one runs. */
let stopHolding: (() => void) | null = null;

/** Two full collections closer than this: the old generation's margin is too small for the traffic. */
export const BACK_TO_BACK_MS = 1_000;
/** Held this long after the last full collection, then V8 decides again. */
export const HOLD_MS = 60_000;

/** Decides the growing percent after each collection (pure: times and sizes are passed in). */
export class HeadroomHold {
  private lastMajorAt = Number.NEGATIVE_INFINITY;
  private percent = 0;

  constructor(
    private readonly headroomBytes = HEADROOM_BYTES,
    private readonly backToBackMs = BACK_TO_BACK_MS,
  ) {}

  /**
   * A collection ended at `at` (ms), full or not: the percent to set now. `oldBytes` counts only
   * after a full one (what it left alive is what V8 grows from; between them it holds garbage).
   */
  collected(at: number, major: boolean, oldBytes: number): number {
    const sinceMajor = at - this.lastMajorAt;
    if (major) {
      const held = sinceMajor < this.backToBackMs || (this.percent > 0 && sinceMajor <= HOLD_MS);
      this.percent = held ? growingPercentFor(oldBytes, this.headroomBytes) : 0;
      this.lastMajorAt = at;
    } else if (sinceMajor > HOLD_MS) {
      this.percent = 0;
    }
    return this.percent;
  }
}

export interface HeadroomOptions {
  readonly headroomBytes?: number;
  /** Full collections closer than this start the hold (tests use a longer one). */
  readonly backToBackMs?: number;
  /** Where an operator's own flag would be (default: this process's). */
  readonly execArgv?: readonly string[];
  readonly nodeOptions?: string | undefined;
}

/**
 * Starts keeping the headroom; the returned function stops (and gives V8 its own factor back).
 * Does nothing when the operator set the factor.
 */
export function keepOldGenerationHeadroom(options: HeadroomOptions = {}): () => void {
  const { headroomBytes = HEADROOM_BYTES, backToBackMs = BACK_TO_BACK_MS } = options;
  if (operatorSetHeapGrowing(options.execArgv ?? process.execArgv, options.nodeOptions ?? process.env['NODE_OPTIONS'])) return () => {};
  // One hold per process: the flag is process-wide (in-process serves, as tests run, share it).
  if (stopHolding !== null) return stopHolding;
  let percent = 0;
  const setPercent = (wanted: number) => {
    if (wanted === percent) return;
    percent = wanted;
    v8.setFlagsFromString(`--heap-growing-percent=${wanted}`);
  };
  const hold = new HeadroomHold(headroomBytes, backToBackMs);
  // V8 reads the flag when it next sets the limit, at the end of a mark-compact.
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const kind = (entry as { detail?: { kind?: number } }).detail?.kind;
      const major = kind === constants.NODE_PERFORMANCE_GC_MAJOR;
      setPercent(hold.collected(entry.startTime + entry.duration, major, major ? oldGenerationBytes() : 0));
    }
  });
  observer.observe({ entryTypes: ['gc'] });
  const stop = () => {
    observer.disconnect();
    setPercent(0);
    if (stopHolding === stop) stopHolding = null;
  };
  stopHolding = stop;
  return stop;
}
