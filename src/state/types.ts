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
  /**
   * A shared store's one round trip for a decision that needs both a registration lookup and
   * history: finds `lookup.client`'s registrations in `registry` and reads, in the same round
   * trip, the history of each one found (its session, else the client), or `lookup.fallbackKey`'s
   * when an open-calls lookup finds none. null when `registry` is not this store's own (the
   * caller then reads the two in turn). Rejects as `CallStore` reads do. Absent on the memory
   * store, whose reads cost no round trip.
   */
  readWithRegistrations?(registry: CallStore, lookup: RegistrationsQuery, now: number): Promise<RegistrationsWithHistories> | null;
}

/** `callId`: that one registration (none found: no history is read); null: every open call of the client. */
export interface RegistrationsQuery {
  readonly client: string;
  readonly callId: string | null;
  /** The history key read when an open-calls lookup finds no call. */
  readonly fallbackKey: string;
}

/**
 * The live registrations found (open calls in registration order) and the history of each, in
 * the same order; with no call found by an open-calls lookup, `histories` holds the fallback
 * key's alone. A history is null when the store cannot vouch for it (`state_unavailable`).
 */
export interface RegistrationsWithHistories {
  readonly calls: readonly RegisteredCall[];
  readonly histories: ReadonlyArray<readonly HistoryCall[] | null>;
}

/** A registered tool call (registry.ts), as both stores hold it. */
export interface RegisteredCall {
  readonly callId: string;
  readonly tool: string;
  readonly client: string;
  readonly sessionId: string | null;
  readonly registeredAt: number;
  readonly expiresAt: number;
}

/**
 * Why a registration was refused. `conflict`: the call id is live for another client (409);
 * `client_limit`: the client has `maxPerClient` open calls (429); `registry_full`: the registry
 * holds `maxTotal` open calls (503: the proxy's bound, not the caller's fault).
 */
export interface RegistrationRefused {
  readonly error: string;
  readonly code: 'conflict' | 'client_limit' | 'registry_full';
}

export interface Registration {
  readonly callId: string;
  readonly tool: string;
  readonly client: string;
  readonly sessionId?: string | null;
  readonly ttlMs?: number;
}

/**
 * Registered calls ("socket tags"), read by attribution. Reads may be asynchronous (Redis) and
 * then reject with `StateUnavailableError` when the store is down or slower than its timeout; a
 * registration always goes to the store before it is answered (a promise with Redis).
 */
export interface CallStore {
  register(input: Registration): MaybePromise<RegisteredCall | RegistrationRefused>;
  /** true when a live registration was ended. */
  end(callId: string): MaybePromise<boolean>;
  /** The live registration of `callId` for `client`, or null (unknown, expired, or another client's). */
  find(client: string, callId: string): MaybePromise<RegisteredCall | null>;
  /** Every live registration of `client` (at most the per-client cap). */
  open(client: string): MaybePromise<RegisteredCall[]>;
  /** Open registrations in all (a gauge; Redis counts every replica's). */
  size(): MaybePromise<number>;
}

/** One destination observe mode recorded (discovered.ts). */
export interface DiscoveredDestination {
  readonly server: string;
  readonly tool: string | null;
  readonly host: string;
  readonly port: number;
  count: number;
  readonly first_seen: string;
  last_seen: string;
}

/**
 * Observe mode's discovered destinations. `record` never blocks and never throws: with Redis
 * it is a background write, and `onFirstSeen` runs (later) on the one replica whose write
 * created the entry, so `egress.discovered` is logged once per fleet. `list` merges every
 * replica's counts exactly.
 */
export interface DiscoveredLog {
  record(server: string, tool: string | null, host: string, port: number, onFirstSeen?: (entry: DiscoveredDestination) => void): void;
  list(): MaybePromise<DiscoveredDestination[]>;
}

/** The store could not vouch for a read or a registration (down, or slower than `timeout_ms`). */
export class StateUnavailableError extends Error {
  readonly code = 'state_unavailable';
  constructor(message: string) {
    super(message);
    this.name = 'StateUnavailableError';
  }
}

/** What `createState` (create-state.ts) gives: the three stores behind one `state.store`. */
export interface State {
  readonly store: 'memory' | 'redis';
  /** For the start-up log line: `memory`, or the Redis URL with its password redacted. */
  readonly description: string;
  readonly calls: CallStore;
  readonly discovered: DiscoveredLog;
  /** Redis: the shared store. Memory: what `memoryHistory` made (null without it). */
  readonly history: HistoryStore | null;
  /** Whether the store can answer now (always true for memory). */
  readonly up: boolean;
  /** Background writes waiting for the store to come back. */
  readonly queuedWrites: number;
  close(): Promise<void>;
}

export interface StateOptions {
  readonly defaultTtlMs: number;
  readonly maxPerClient?: number;
  readonly maxTotal?: number;
  /** Where $MCP_EGRESS_REDIS_PASSWORD is read (process.env in production). */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** The memory session-history store (src/state/history.ts), for `store: memory`. */
  readonly memoryHistory?: () => HistoryStore;
  /** Extra CA for `rediss://` (tests; operators use NODE_EXTRA_CA_CERTS). */
  readonly tlsCa?: string;
  readonly now?: () => number;
  readonly onHealth?: (up: boolean) => void;
  readonly onDropped?: (reason: string) => void;
  readonly onRetried?: () => void;
  readonly warn?: (fields: Record<string, unknown>, message: string) => void;
}
