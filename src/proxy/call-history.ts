/**
 * The data path's side of session history (interface.md "Session history", source 1): recording
 * every decided call. Reading the histories a decision needs is attribution/decision-reads.ts
 * (with the registration lookup, one round trip to a shared store).
 *
 * A call attributed to several open registered calls is recorded under each of their keys (its
 * bytes may belong to any of them).
 */
import type { Attribution } from '../attribution/attribute.js';
import type { IpAddress } from '../net/address.js';
import type { HistoryStore } from '../state/types.js';

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
