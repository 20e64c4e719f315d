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
  /** How many records each call id has here: a call id not in it needs no scan to merge. */
  readonly ids: Map<string | null, number>;
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
      this.keys.clear(); // (each key's ids go with it)
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
      entry = { calls: EMPTY, lostAt: this.evictedAt, ids: new Map() };
    }
    this.keys.set(key, entry);
    const before = entry.calls.length;
    const calls = merge(entry, call);
    if (calls === null) return;
    entry.calls = calls;
    this.total += calls.length - before;
    this.trim(entry, now);
    if (entry.calls.length > this.maxPerKey) {
      const kept = entry.calls.slice(0, this.maxPerKey);
      for (let i = this.maxPerKey; i < entry.calls.length; i++) {
        const lost = entry.calls[i] as HistoryCall;
        entry.lostAt = Math.max(entry.lostAt, lost.at);
        forget(entry.ids, lost.callId);
      }
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
    for (let i = n; i < calls.length; i++) forget(entry.ids, (calls[i] as HistoryCall).callId);
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
 * The key's records with `call` added (module comment: merged records), newest first, as a new
 * array (`entry.ids` follows); null when a record already covers `call`.
 */
function merge(entry: KeyHistory, call: HistoryCall): HistoryCall[] | null {
  const { calls, ids } = entry;
  /** Indexes of the records `call` makes redundant, ascending. */
  const covered: number[] = [];
  if (ids.has(call.callId)) {
    for (let i = 0; i < calls.length; i++) {
      const e = calls[i] as HistoryCall;
      if (e.callId !== call.callId) continue;
      if (covers(e, call)) return null;
      if (covers(call, e)) covered.push(i);
    }
  }
  const kept = stored(call, calls[0]);
  ids.set(kept.callId, (ids.get(kept.callId) ?? 0) + 1);
  const out = calls.slice();
  for (let j = covered.length - 1; j >= 0; j--) {
    const [e] = out.splice(covered[j] as number, 1);
    forget(ids, (e as HistoryCall).callId);
  }
  // Usually the newest record: at the front, with no scan for its place.
  let at = 0;
  while (at < out.length && (out[at] as HistoryCall).at > call.at) at++;
  if (at === 0) out.unshift(kept);
  else out.splice(at, 0, kept);
  return out;
}

function forget(ids: Map<string | null, number>, callId: string | null): void {
  const n = (ids.get(callId) ?? 0) - 1;
  if (n <= 0) ids.delete(callId);
  else ids.set(callId, n);
}

/**
 * The record as the store keeps it: one shape for every record (the engine reads them all), the
 * key's own server and session strings when equal (one copy per key, not per call), and copies of
 * the rest. A header value may be a slice of the whole request head, which a record kept for the
 * window would otherwise keep alive.
 */
function stored(call: HistoryCall, newest: HistoryCall | undefined): HistoryCall {
  return {
    at: call.at,
    tool: copy(call.tool),
    callId: copy(call.callId),
    server: newest !== undefined && newest.server === call.server ? newest.server : copy(call.server),
    sessionId: newest !== undefined && newest.sessionId === call.sessionId ? newest.sessionId : copy(call.sessionId),
    host: copy(call.host),
    address: call.address,
    dispatched: call.dispatched,
  };
}

/** A string of its own (flattened: not a slice of a larger one). */
function copy(s: string | null): string | null {
  return s === null || s.length < 13 ? s : (' ' + s).slice(1);
}
