/**
 * What a decision reads before the policy runs: the call's attribution (its headers, and the
 * registered calls when the headers leave it to them) and, when the serving policy has sequence
 * clauses, the history of each attributed call (its session, else its client identity).
 *
 * Threat and scope: a sequence rule refuses only if the history holds the earlier call, so a
 * history that cannot be vouched for (a bound dropped calls still inside the window, a shared
 * store down or slower than its timeout) comes back null and the caller refuses the call
 * (`state_unavailable`), never decides it as if nothing happened. A registration lookup that
 * fails rejects, and the caller refuses the call the same way.
 *
 * Cost (interface.md "Shared state"): the memory stores answer without a promise. A shared store
 * pays one round trip where state is needed and none elsewhere: a lookup and the histories of
 * what it finds are one script (`HistoryStore.readWithRegistrations`), not a lookup and then a
 * read; attribution by headers alone reads only the histories (one round trip, the reads of
 * several calls pipelined), and nothing at all without sequence clauses.
 */
import type { CallStore, HistoryStore, MaybePromise, RegistrationsWithHistories } from '../state/types.js';
import { historyKey } from '../state/types.js';
import type { HistoryCall } from '../policy/types.js';
import { attributionFromHeaders, fromFound, fromOpen } from './attribute.js';
import type { AttributionHeaders, AttributionResult, HeaderGetter, RegistrationLookup } from './attribute.js';

export type Histories = ReadonlyArray<readonly HistoryCall[]>;

export interface DecisionReads {
  readonly attribution: AttributionResult;
  /**
   * With `withHistories`: each attributed call's history in the order of its calls, or null when
   * any cannot be vouched for (refuse: `state_unavailable`). Without it: null, nothing was read.
   */
  readonly histories: Histories | null;
}

export interface DecisionReadOptions {
  readonly names: AttributionHeaders;
  readonly trust: 'header' | 'registered';
  readonly registry: CallStore;
  readonly history: HistoryStore;
  /** The serving policy has sequence clauses: histories are read (else never). */
  readonly withHistories: boolean;
  readonly now: number;
}

/** A promise only when a shared store answers with one; rejects when a registration lookup fails. */
export function readForDecision(get: HeaderGetter, client: string, o: DecisionReadOptions): MaybePromise<DecisionReads> {
  const need = attributionFromHeaders(get, o.names, o.trust);
  if (need.kind !== 'lookup') return withHistoriesOf(need, client, o);
  if (o.withHistories && o.history.readWithRegistrations) {
    const query = { client, callId: need.callId, fallbackKey: historyKey(need.fallbackSessionId, client) };
    const combined = o.history.readWithRegistrations(o.registry, query, o.now);
    if (combined) return combined.then((found) => fromCombined(client, need, found));
  }
  // The memory store (no promise), or a history store that is not the registry's: in turn.
  if (need.callId !== null) {
    const found = o.registry.find(client, need.callId);
    return found instanceof Promise
      ? found.then((call) => withHistoriesOf(fromFound(client, need, call), client, o))
      : withHistoriesOf(fromFound(client, need, found), client, o);
  }
  const open = o.registry.open(client);
  return open instanceof Promise
    ? open.then((calls) => withHistoriesOf(fromOpen(need, calls), client, o))
    : withHistoriesOf(fromOpen(need, open), client, o);
}

function withHistoriesOf(attribution: AttributionResult, client: string, o: DecisionReadOptions): MaybePromise<DecisionReads> {
  if (attribution.kind !== 'attributed' || !o.withHistories) return { attribution, histories: null };
  const read = readHistories(o.history, attribution.calls, client, o.now);
  return read instanceof Promise ? read.then((histories) => ({ attribution, histories })) : { attribution, histories: read };
}

/** The combined read's answer as attribution and histories; anything that does not line up is not vouched for. */
function fromCombined(client: string, need: RegistrationLookup, found: RegistrationsWithHistories): DecisionReads {
  const attribution = need.callId !== null ? fromFound(client, need, found.calls[0] ?? null) : fromOpen(need, found.calls);
  if (attribution.kind !== 'attributed') return { attribution, histories: null };
  const histories = found.histories;
  const vouched = histories.length === attribution.calls.length && !histories.includes(null);
  return { attribution, histories: vouched ? (histories as Histories) : null };
}

/**
 * Each call's history (its session, else the client identity), in the order of `calls`; null
 * when any cannot be vouched for. A promise only when the store answers with one.
 */
export function readHistories(
  store: HistoryStore,
  calls: ReadonlyArray<{ readonly sessionId: string | null }>,
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
