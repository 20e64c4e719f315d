/**
 * One call's decision, as the proxy, the `test` command and the admin API's dry run all make
 * it: a name the policy blocks by name alone is refused with no DNS query; otherwise the name is
 * resolved once and every candidate address is judged (baseline, then rules). The addresses in
 * the decision are the only ones the dial may use.
 */
import type { IpAddress } from '../net/address.js';
import type { Target } from '../net/destination.js';
import { DnsError } from '../net/resolve.js';
import type { NameResolver } from '../net/resolve.js';
import { combineDecisions, decide, decideByName, forDecision, lookupName, mostSevere } from '../policy/evaluate.js';
import type { Classify, DestinationHost } from '../policy/evaluate.js';
import type { CompiledPolicy } from '../policy/compile.js';
import type { CallContext, Decision } from '../policy/types.js';
import type { MaybePromise } from '../state/types.js';

export interface DecisionDeps {
  readonly resolver: NameResolver;
  readonly classify: Classify;
  readonly explain?: boolean;
}

export type CallOutcome =
  | {
      readonly kind: 'decided';
      readonly decision: Decision;
      /** Which of the contexts the decision speaks for (the most severe one). */
      readonly index: number;
      readonly candidates: readonly IpAddress[];
      readonly dnsMs: number | null;
    }
  | { readonly kind: 'dns_error'; readonly error: DnsError; readonly dnsMs: number | null };

/**
 * Decides one call for each of `contexts` (several registered calls share one resolution).
 * Answers at once when no DNS query is needed (an IP literal, a name refused by name, a fresh
 * cached answer): the data path makes no promise for those calls.
 */
export function decideCall(
  policy: CompiledPolicy,
  contexts: readonly CallContext[],
  target: Target,
  deps: DecisionDeps,
): MaybePromise<CallOutcome> {
  const options = { classify: deps.classify, explain: deps.explain ?? false };
  // One memo of sequence clauses per call, shared by the by-name step and the full decision.
  if (policy.hasSequenceRules) contexts = contexts.map((ctx) => forDecision(policy, ctx));
  const { host } = target;
  if (host.kind === 'ip') {
    const decisions = contexts.map((ctx) => decide(policy, ctx, { name: null }, [host.ip], options));
    return { kind: 'decided', ...combine(decisions), candidates: [host.ip], dnsMs: null };
  }
  const dest = lookupName(policy, host.host) as DestinationHost & { readonly name: string };
  const byName = contexts.map((ctx) => decideByName(policy, ctx, dest, options));
  const blocked = byName.findIndex((d) => d !== null);
  if (blocked !== -1) return { kind: 'decided', decision: byName[blocked] as Decision, index: blocked, candidates: [], dnsMs: null };
  const decideFor = (addresses: readonly IpAddress[], dnsMs: number): CallOutcome => {
    const decisions = contexts.map((ctx) => decide(policy, ctx, dest, addresses, options));
    return { kind: 'decided', ...combine(decisions), candidates: addresses, dnsMs };
  };
  const cached = deps.resolver.peek?.(host.host);
  if (cached) return decideFor(cached.addresses, cached.durationMs);
  return deps.resolver.resolve(host.host).then(
    (resolution) => decideFor(resolution.addresses, resolution.durationMs),
    (err: unknown) => {
      if (err instanceof DnsError) return { kind: 'dns_error', error: err, dnsMs: null };
      throw err;
    },
  );
}

/** The decision for the call, and which context it speaks for (one context, the common case: that one). */
function combine(decisions: readonly Decision[]): { readonly decision: Decision; readonly index: number } {
  if (decisions.length === 1) return { decision: decisions[0] as Decision, index: 0 };
  return { decision: combineDecisions(decisions), index: decisions.indexOf(mostSevere(decisions)) };
}
