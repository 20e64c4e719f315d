/**
 * Sequence clauses (policy.md "Sequence clauses (`after`)"): finding the earlier call of a call's
 * history that satisfies a clause. The history is part of the call's input (CallContext), never a
 * reason to look anything up. A clause does not depend on the destination, so for one call it
 * either holds or not; each distinct clause is evaluated at most once per decision (a memo carried
 * with the call), and only when a rule that has it otherwise matches.
 */
import { embeddedIpv4 } from '../net/address.js';
import type { AfterMatcher, CompiledAfter, CompiledPolicy } from './compile.js';
import { addressOnSet, nameOnSet } from './entry-set.js';
import type { AfterMatch, CallContext, HistoryCall } from './types.js';

/** A call being decided under a policy with sequence clauses: each clause's answer, once computed. */
interface SequenceCall extends CallContext {
  /** By matcher id: the earlier call found, null for none, undefined while not yet asked. */
  readonly afterMemo: Array<HistoryCall | null | undefined>;
}

/**
 * The call as the walk sees it: with a memo of its sequence clauses when the policy has any
 * (else as given, at no cost). Pass the result to both `decideByName` and `decide` of one call
 * so that they share the memo; a call that already carries one is returned as is.
 */
export function forDecision(policy: CompiledPolicy, ctx: CallContext): CallContext {
  if (!policy.hasSequenceRules || (ctx as Partial<SequenceCall>).afterMemo !== undefined) return ctx;
  return { ...ctx, afterMemo: new Array<HistoryCall | null | undefined>(policy.afterClauses) } as SequenceCall;
}

/**
 * The most recent call of `ctx.history` that `match` accepts (policy.md "Earlier call": another
 * call id, tool and server globs, `hosts`), looking back `match.scanMs`, or null. The history is
 * newest first, so the walk stops at the first call older than that. A call recorded "after" now
 * (a clock stepped back) counts as just now: it was recorded before this decision, and failing
 * closed means it still counts.
 */
export function findEarlier(match: AfterMatcher, ctx: CallContext): HistoryCall | null {
  const { history, callId } = ctx;
  const oldest = ctx.now - match.scanMs;
  const hosts = match.hosts;
  for (let i = 0; i < history.length; i++) {
    const e = history[i] as HistoryCall;
    if (e.at < oldest) break;
    // A call never follows itself (a registered call and its own egress share the call id).
    if (callId !== null && e.callId === callId) continue;
    if (!match.tool(e.tool) || !match.server(e.server)) continue;
    // `hosts`: only a dispatched egress call read anything from a host. Checked last: the costliest.
    if (hosts !== null) {
      if (e.dispatched !== true) continue;
      const { address } = e;
      if (
        !nameOnSet(hosts, e.host) &&
        !(address !== null && addressOnSet(hosts, address, address.family === 6 ? embeddedIpv4(address) : null))
      )
        continue;
    }
    return e;
  }
  return null;
}

/**
 * The earlier call satisfying `clause` (the most recent), or null. The matcher's answer is
 * memoised for the decision when the call carries a memo; the window is this clause's own.
 */
export function earlierFor(clause: CompiledAfter, ctx: CallContext): HistoryCall | null {
  const { match } = clause;
  const memo = (ctx as Partial<SequenceCall>).afterMemo;
  let found = memo?.[match.id];
  if (found === undefined) {
    found = findEarlier(match, ctx);
    if (memo !== undefined) memo[match.id] = found;
  }
  return found !== null && ctx.now - found.at <= clause.withinMs ? found : null;
}

/** The decision's `after` field for an earlier call. */
export function afterMatch(e: HistoryCall, now: number): AfterMatch {
  return {
    call_id: e.callId,
    tool: e.tool,
    server: e.server,
    session_id: e.sessionId,
    host: e.host,
    seconds_ago: Math.max(0, Math.round(now - e.at)) / 1000,
  };
}
