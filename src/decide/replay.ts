/**
 * Replay (`POST /v1/test/replay`): the recorded decisions decided again under the serving policy
 * and under a draft, to show what a change would break before it is enforced.
 *
 * A dry run, never traffic: no DNS query and no dial. Each call is decided with the inputs it
 * had (host, port, tool, server, call id, its time, and the candidate addresses resolved then),
 * by the same code as the data path (decide-call.ts) with a resolver that answers only from the
 * recording. Its history is rebuilt from the recorded decisions themselves (the egress calls of
 * the same session, else client, before it). A call the live policy refused by name alone was
 * never resolved (no DNS for names refused by name), so when a policy would not refuse it by
 * name its verdict depends on addresses nobody looked up: it is reported as unresolved, not
 * guessed.
 *
 * Both sides are decided now with the same inputs, so a draft equal to the serving policy changes
 * nothing; what was logged at the time is reported alongside (`recorded`). Decisions that were
 * not the policy's (an unattributed call) are the same under any policy.
 */
import { canonicalHost } from '../net/address.js';
import type { IpAddress } from '../net/address.js';
import type { NameResolver, Resolution } from '../net/resolve.js';
import type { CompiledPolicy } from '../policy/compile.js';
import type { Classify } from '../policy/evaluate.js';
import type { Decision, HistoryCall, RuleRef } from '../policy/types.js';
import type { DecisionEvent } from '../events/events.js';
import { decideCall } from './decide-call.js';

export interface RecordedCall {
  readonly at: number;
  readonly event: DecisionEvent;
}

export interface Verdict {
  readonly verdict: string;
  readonly dispatched: boolean;
  readonly shadow: boolean;
  readonly reason: string;
  readonly rule: RuleRef | null;
}

export interface ReplayedCall {
  readonly conn_id: string;
  readonly at: string;
  readonly tool: string | null;
  readonly server: string;
  readonly session_id: string | null;
  readonly call_id: string | null;
  readonly host: string;
  readonly port: number;
  readonly recorded: Verdict & { readonly policy_generation: number };
  /** null: unresolved (see the module comment). */
  readonly live: Verdict | null;
  readonly draft: Verdict | null;
}

export interface ReplayAnswer {
  readonly calls: readonly ReplayedCall[];
  /** conn_ids whose verdict or dispatch differs between live and draft. */
  readonly changed: readonly string[];
  /** conn_ids that one side could not decide without DNS. */
  readonly unresolved: readonly string[];
}

const POLICY_REASONS = new Set(['rule', 'default', 'ssrf_baseline']);

class NotRecorded extends Error {}

function verdictOf(d: Decision): Verdict {
  return { verdict: d.verdict, dispatched: d.dispatched, shadow: d.shadow, reason: d.reason, rule: d.rule };
}

function addressOf(text: string | null): IpAddress | null {
  if (text === null) return null;
  const h = canonicalHost(text);
  return h.kind === 'ip' ? h.ip : null;
}

/** The recorded egress calls as history, keyed as the data path keys it (session, else client). */
function historyKey(e: DecisionEvent): string {
  return e.session_id !== null ? `s:${e.session_id}` : `c:${e.server}`;
}

function asHistory(call: RecordedCall): HistoryCall {
  const e = call.event;
  return {
    at: call.at,
    tool: e.tool,
    callId: e.call_id,
    server: e.server,
    sessionId: e.session_id,
    host: e.host,
    address: addressOf(e.pinned_address),
    dispatched: e.decision.dispatched,
  };
}

/** `calls` oldest first (as recorded); the answer lists them newest first. */
export async function replay(
  live: CompiledPolicy,
  draft: CompiledPolicy,
  calls: readonly RecordedCall[],
  classify: Classify,
): Promise<ReplayAnswer> {
  const needHistory = live.hasSequenceRules || draft.hasSequenceRules;
  const byKey = new Map<string, HistoryCall[]>();
  const out: ReplayedCall[] = [];
  const changed: string[] = [];
  const unresolved: string[] = [];
  for (const call of calls) {
    const e = call.event;
    const recorded = { ...verdictOf(e.decision), policy_generation: e.policy_generation };
    let history: readonly HistoryCall[] = [];
    if (needHistory) {
      const key = historyKey(e);
      const list = byKey.get(key) ?? [];
      history = [...list].reverse();
      list.push(asHistory(call));
      byKey.set(key, list);
    }
    let liveVerdict: Verdict | null;
    let draftVerdict: Verdict | null;
    if (!POLICY_REASONS.has(e.decision.reason)) {
      liveVerdict = draftVerdict = verdictOf(e.decision);
    } else {
      liveVerdict = await decideRecorded(live, call, history, classify);
      draftVerdict = await decideRecorded(draft, call, history, classify);
    }
    if (liveVerdict === null || draftVerdict === null) unresolved.push(e.conn_id);
    else if (liveVerdict.verdict !== draftVerdict.verdict || liveVerdict.dispatched !== draftVerdict.dispatched) changed.push(e.conn_id);
    out.push({
      conn_id: e.conn_id,
      at: new Date(call.at).toISOString(),
      tool: e.tool,
      server: e.server,
      session_id: e.session_id,
      call_id: e.call_id,
      host: e.host,
      port: e.port,
      recorded,
      live: liveVerdict,
      draft: draftVerdict,
    });
  }
  return { calls: out.reverse(), changed: changed.reverse(), unresolved: unresolved.reverse() };
}

async function decideRecorded(
  policy: CompiledPolicy,
  call: RecordedCall,
  history: readonly HistoryCall[],
  classify: Classify,
): Promise<Verdict | null> {
  const e = call.event;
  const host = canonicalHost(e.host);
  if (host.kind === 'error') return null;
  const addresses = e.decision.addresses.map(addressOf).filter((a): a is IpAddress => a !== null);
  const resolver: NameResolver = {
    resolve: (): Promise<Resolution> =>
      addresses.length > 0 ? Promise.resolve({ addresses, cached: true, durationMs: 0 }) : Promise.reject(new NotRecorded()),
  };
  const ctx = { tool: e.tool, server: e.server, port: e.port, callId: e.call_id, now: call.at, history };
  try {
    const outcome = await decideCall(policy, [ctx], { host, port: e.port }, { resolver, classify });
    return outcome.kind === 'decided' ? verdictOf(outcome.decision) : null;
  } catch (err) {
    if (err instanceof NotRecorded) return null;
    throw err;
  }
}
