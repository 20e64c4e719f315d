/**
 * The data path's side of session history (interface.md "Session history", source 1): reading
 * the histories a decision needs, and recording every decided call.
 *
 * Threat and scope: a sequence rule refuses only if the history holds the earlier call, so a
 * history that cannot be read (a bound dropped calls still inside the window, a shared store
 * down or slower than its timeout) refuses the call (`state_unavailable`), never decides it
 * as if nothing happened. Histories are read only when the serving policy has sequence clauses:
 * otherwise a call costs one boolean test here. A call attributed to several open registered
 * calls is recorded under each of their keys (its bytes may belong to any of them).
 */
import type { Attribution } from '../attribution/attribute.js';
import type { IpAddress } from '../net/address.js';
import type { HistoryCall } from '../policy/types.js';
import { historyKey } from '../state/types.js';
import type { HistoryStore, MaybePromise } from '../state/types.js';

export type Histories = ReadonlyArray<readonly HistoryCall[]>;

/**
 * Each call's history (its session, else the client identity), in the order of `calls`; null
 * when any cannot be vouched for. A promise only when the store answers with one.
 */
export function readHistories(
  store: HistoryStore,
  calls: readonly Attribution[],
  client: string,
  now: number,
): MaybePromise<Histories | null> {
  const reads = calls.map((c) => store.read(historyKey(c.sessionId, client), now));
  if (!reads.some((r) => r instanceof Promise)) return reads.includes(null) ? null : (reads as Histories);
  return Promise.all(reads.map((r) => Promise.resolve(r))).then(
    (all) => (all.includes(null) ? null : (all as Histories)),
    () => null,
  );
}

/**
 * Records a decided call under each attributed call's key: the host, the address dialled
 * (`pinned`; null when refused or the dial failed) and whether it went out.
 */
export function recordDecided(
  store: HistoryStore,
  calls: readonly Attribution[],
  client: string,
  host: string,
  pinned: IpAddress | null,
): void {
  const at = Date.now();
  for (const c of calls) {
    store.record({
      at,
      tool: c.tool,
      callId: c.callId,
      server: client,
      sessionId: c.sessionId,
      host,
      address: pinned,
      dispatched: pinned !== null,
    });
  }
}
