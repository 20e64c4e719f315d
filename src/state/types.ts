/**
 * The state the proxy keeps between calls, behind interfaces that a one-process memory store and
 * a shared (Redis) store both implement (interface.md "Session history", "Shared state").
 *
 * A read that a decision waits on may be asynchronous (Redis) or not (memory): `MaybePromise`
 * lets the memory store answer without a promise, so a single process pays nothing for the seam.
 * Writes no decision waits on (history, discovered counts) return nothing and never throw.
 */
import type { HistoryCall } from '../policy/types.js';

export type MaybePromise<T> = T | Promise<T>;

/** Most calls kept per history key (interface.md); the oldest is dropped first. */
export const MAX_CALLS_PER_KEY = 1024;

/** The key of a call's history: its session when it has one, else its client identity. */
export function historyKey(sessionId: string | null, server: string | null): string {
  return sessionId !== null ? `session:${sessionId}` : `server:${server ?? ''}`;
}

/** Session history: what a sequence clause (`after`) asks about. */
export interface HistoryStore {
  /** Records one call under `historyKey(call.sessionId, call.server)`; never blocks, never throws. */
  record(call: HistoryCall): void;
  /**
   * The key's calls inside the retention, newest first. `null` (or a rejected promise) when the
   * store cannot vouch for them (dropped by a bound, store down, slower than its timeout): the
   * caller refuses the call as `state_unavailable` (fail closed).
   */
  read(key: string, now: number): MaybePromise<readonly HistoryCall[] | null>;
  /** The longest `within_seconds` of the serving policy (0: keep nothing). */
  setRetention(seconds: number): void;
  readonly retentionSeconds: number;
}
