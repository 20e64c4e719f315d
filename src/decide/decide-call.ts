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

/** Decides one call for each of `contexts` (several registered calls share one resolution). */
export async function decideCall(
  policy: CompiledPolicy,
  contexts: readonly CallContext[],
  target: Target,
  deps: DecisionDeps,
): Promise<CallOutcome> {
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
  let addresses: readonly IpAddress[];
  let dnsMs: number;
  try {
    const resolution = await deps.resolver.resolve(host.host);
    addresses = resolution.addresses;
    dnsMs = resolution.durationMs;
  } catch (err) {
    if (err instanceof DnsError) return { kind: 'dns_error', error: err, dnsMs: null };
    throw err;
  }
  const decisions = contexts.map((ctx) => decide(policy, ctx, dest, addresses, options));
  return { kind: 'decided', ...combine(decisions), candidates: addresses, dnsMs };
}

/** The decision for the call, and which context it speaks for (one context, the common case: that one). */
function combine(decisions: readonly Decision[]): { readonly decision: Decision; readonly index: number } {
  if (decisions.length === 1) return { decision: decisions[0] as Decision, index: 0 };
  return { decision: combineDecisions(decisions), index: decisions.indexOf(mostSevere(decisions)) };
}
