/**
 * Session history in one process (interface.md "Session history"): the calls the proxy learns
 * of, kept per key (the call's session id, else its client identity) so that a sequence clause
 * (`after`) can ask what a session did before. The engine never looks anything up; the data path
 * reads a key's history here and passes it in.
 *
 * Threat and scope: history is what makes a sequence rule refuse, so losing it fails open. The
 * writers include the guarded server (its own calls, and announcements under `trust: header`),
 * which may try to push a sensitive read out of its history or grow the store without bound. So
 * the store is bounded (1,024 calls per key, `maxCalls` in all) and says when it cannot vouch
 * for a key: `read` answers `null` while a call that was dropped by a bound could still be inside
 * the longest window, and the caller then refuses (`state_unavailable`, fail closed) rather than
 * deciding on a partial history. Only time, never a writer, makes a key whole again.
 *
 * What is kept of a call id's traffic (one call id, many connections): everything a clause can
 * tell apart and nothing more. Records are merged when one matches every clause the other does:
 * - each distinct dispatched leg (host, address dialled) of a call once, with its newest time,
 *   so a `hosts:` clause sees every dispatched leg;
 * - the rest (the registration or announcement, refused legs, failed dials) once per call, the
 *   newest, and not at all when a dispatched leg of the same call is as recent (a leg matches
 *   whatever the bare call matches: same call id, tool, server, session).
 * So a registered call that then connects is one record, not two; a call that fetched from two
 * hosts is two. "The same call" is the same call id, tool, client identity and session.
 */
import type { HistoryCall } from '../policy/types.js';
import { historyKey, MAX_CALLS_PER_KEY } from './types.js';
import type { HistoryStore } from './types.js';

/** Calls kept in all (every key together) unless the operator says otherwise (`limits.max_history_calls`). */
export const DEFAULT_MAX_HISTORY_CALLS = 1_000_000;

interface KeyHistory {
  /** Newest first. Never changed in place: a reader's array stays as it was read (copy on write). */
  calls: readonly HistoryCall[];
  /**
   * The newest time among calls this key lost to a bound (its own cap, or the eviction of the
   * whole key before it was written again); -Infinity when none. The key is vouched for only
   * once that time has left the retention window.
   */
  lostAt: number;
}

export interface MemoryHistoryOptions {
  /** Calls per key (default and most: MAX_CALLS_PER_KEY). */
  readonly maxCallsPerKey?: number;
  /** Calls in all; at the bound the key written longest ago is evicted. */
  readonly maxCalls?: number;
  readonly now?: () => number;
}

const EMPTY: readonly HistoryCall[] = Object.freeze([]);

function sameCall(a: HistoryCall, b: HistoryCall): boolean {
  return a.callId === b.callId && a.tool === b.tool && a.server === b.server && a.sessionId === b.sessionId;
}

function isLeg(c: HistoryCall): boolean {
  return c.dispatched === true;
}

function sameLeg(a: HistoryCall, b: HistoryCall): boolean {
  return a.host === b.host && (a.address === b.address || (a.address !== null && b.address !== null && a.address.text === b.address.text));
}

export class MemoryHistoryStore implements HistoryStore {
  /** Map order is write order: the first key is the one written longest ago (eviction, sweeps). */
  private readonly keys = new Map<string, KeyHistory>();
  private retentionMs = 0;
  /** The newest call time among evicted keys: an absent key cannot be vouched for before it leaves the window. */
  private evictedAt = -Infinity;
  private total = 0;
  private readonly maxPerKey: number;
  private readonly maxCalls: number;
  private readonly now: () => number;

  constructor(options: MemoryHistoryOptions = {}) {
    this.maxPerKey = Math.min(options.maxCallsPerKey ?? MAX_CALLS_PER_KEY, MAX_CALLS_PER_KEY);
    this.maxCalls = options.maxCalls ?? DEFAULT_MAX_HISTORY_CALLS;
    this.now = options.now ?? Date.now;
  }

  get retentionSeconds(): number {
    return this.retentionMs / 1000;
  }

  /** Keys held now. */
  get size(): number {
    return this.keys.size;
  }

  /** Calls held now, every key together. */
  get calls(): number {
    return this.total;
  }

  setRetention(seconds: number): void {
    this.retentionMs = Math.max(0, seconds) * 1000;
    // No clause left: nothing will read history, so none is kept (and nothing lost matters). A
    // shorter window is applied as keys are next touched and by `sweep`; a longer one starts with
    // what the shorter one kept (a clause applies from when it is loaded).
    if (this.retentionMs === 0) {
      this.keys.clear();
      this.total = 0;
      this.evictedAt = -Infinity;
    }
  }

  record(call: HistoryCall): void {
    if (this.retentionMs === 0) return;
    const key = historyKey(call.sessionId, call.server);
    const now = this.now();
    let entry = this.keys.get(key);
    if (entry) {
      this.keys.delete(key); // re-inserted below: the most recently written key goes last
    } else {
      // A key created while evicted calls may still be in the window may be one of them.
      entry = { calls: EMPTY, lostAt: this.evictedAt };
    }
    this.keys.set(key, entry);
    const before = entry.calls.length;
    const calls = merge(entry.calls, call);
    if (calls === null) return;
    entry.calls = calls;
    this.total += calls.length - before;
    this.trim(entry, now);
    if (entry.calls.length > this.maxPerKey) {
      const kept = entry.calls.slice(0, this.maxPerKey);
      for (let i = this.maxPerKey; i < entry.calls.length; i++) entry.lostAt = Math.max(entry.lostAt, (entry.calls[i] as HistoryCall).at);
      this.total -= entry.calls.length - kept.length;
      entry.calls = kept;
    }
    if (this.total > this.maxCalls) this.evict(key, now);
  }

  read(key: string, now: number): readonly HistoryCall[] | null {
    const oldest = now - this.retentionMs;
    const entry = this.keys.get(key);
    if (!entry) return this.evictedAt >= oldest ? null : EMPTY;
    if (entry.lostAt >= oldest) return null;
    this.trim(entry, now);
    return entry.calls;
  }

  /** Drops calls older than the retention, and keys left empty (a timer calls it; reads and writes trim what they touch). */
  sweep(now: number = this.now()): void {
    for (const [key, entry] of this.keys) {
      this.trim(entry, now);
      if (entry.calls.length === 0 && entry.lostAt < now - this.retentionMs) this.keys.delete(key);
    }
  }

  /** Over the total bound: keys written longest ago go first (never `keep`, the key just written). */
  private evict(keep: string, now: number): void {
    for (const [key, entry] of this.keys) {
      if (this.total <= this.maxCalls) return;
      if (key === keep) continue;
      this.trim(entry, now);
      const newest = entry.calls[0];
      if (newest) this.evictedAt = Math.max(this.evictedAt, newest.at);
      this.total -= entry.calls.length;
      this.keys.delete(key);
    }
  }

  private trim(entry: KeyHistory, now: number): void {
    const oldest = now - this.retentionMs;
    const calls = entry.calls;
    let n = calls.length;
    while (n > 0 && (calls[n - 1] as HistoryCall).at < oldest) n--;
    if (n === calls.length) return;
    this.total -= calls.length - n;
    entry.calls = n === 0 ? EMPTY : calls.slice(0, n);
  }
}

/**
 * Whether record `x` makes `y` redundant: the same call, at least as recent, and `y` a bare call
 * (matched by whatever matches `x`) or the same dispatched leg.
 */
function covers(x: HistoryCall, y: HistoryCall): boolean {
  return x.at >= y.at && sameCall(x, y) && (!isLeg(y) || (isLeg(x) && sameLeg(x, y)));
}

/**
 * `calls` with `call` added (module comment: merged records), newest first, as a new array; null
 * when a record already covers `call`.
 */
function merge(calls: readonly HistoryCall[], call: HistoryCall): HistoryCall[] | null {
  for (let i = 0; i < calls.length; i++) if (covers(calls[i] as HistoryCall, call)) return null;
  const out: HistoryCall[] = [];
  let placed = false;
  for (let i = 0; i < calls.length; i++) {
    const e = calls[i] as HistoryCall;
    if (!placed && e.at <= call.at) {
      out.push(call);
      placed = true;
    }
    if (!covers(call, e)) out.push(e);
  }
  if (!placed) out.push(call);
  return out;
}
