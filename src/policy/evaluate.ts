/**
 * Evaluates one call against a compiled policy, walking policy.md "Evaluating one connection"
 * step by step (the numbers below are the spec's). Pure: the data path resolves names (step 1)
 * and dials (step 6); it passes the candidate addresses in and the SSRF baseline as `classify`.
 *
 *   decideByName  step 7, before any DNS: the decision for a name the policy blocks whatever it
 *                 resolves to, else null (resolve, then `decide`).
 *   decide        steps 2-5 over the candidate addresses.
 *
 * Either returns a Decision: the deciding rule, the reason, and a trace per candidate; with
 * `explain`, the trace also says why each earlier rule did not match (explain.ts). Which rules a
 * destination can hit is looked up in the rule index (rule-index.ts); what makes a rule match is
 * here. Sequence clauses (sequence.ts): a rule whose clause fails is absent for that call, in
 * `decide` and in step 7 alike; a rule whose clause holds is an ordinary rule.
 */
import { embeddedIpv4 } from '../net/address.js';
import type { IpAddress, Ipv4Address } from '../net/address.js';
import type { AddressClass } from '../net/baseline.js';
import type { CompiledPolicy, CompiledRule } from './compile.js';
import { nameOnSet, addressOnSet } from './entry-set.js';
import { explainAddress, explainName } from './explain.js';
import { firstInList, firstInLists, firstInScope, listsByName, listsForEveryDestination } from './rule-index.js';
import type { Candidates, RuleLists } from './rule-index.js';
import { afterMatch, earlierFor, forDecision } from './sequence.js';
import type { AfterMatch, CallContext, Decision, EgressVerdict, TraceEntry } from './types.js';

export { forDecision } from './sequence.js';

/** The SSRF baseline, injected: the class of address that refuses `ip`, or null. */
export type Classify = (ip: IpAddress, port: number) => AddressClass | null;

export interface DecideOptions {
  readonly classify?: Classify;
  readonly explain?: boolean;
}

/**
 * A canonical destination host: `name` for a host name, null for an IP literal (whose single
 * candidate address is passed to `decide`). `lookupName` fills in the index lists the name can
 * hit, so that the by-name step and `decide` of one call look them up once.
 */
export interface DestinationHost {
  readonly name: string | null;
  /** From `lookupName` with the same policy. */
  readonly nameLists?: RuleLists;
}

/** `name` with the index lists it can hit by name looked up (once for both steps of a call). */
export function lookupName(policy: CompiledPolicy, name: string | null): DestinationHost {
  return { name, nameLists: listsByName(policy.index, name) };
}

function candidates(policy: CompiledPolicy, ctx: CallContext, dest: DestinationHost): Candidates {
  return {
    byName: dest.nameLists ?? listsByName(policy.index, dest.name),
    everyDestination: listsForEveryDestination(policy.index, ctx.tool),
  };
}

/** Step 3, the call's side: the rule's tool glob, server glob and ports match, and its sequence clause (if any) holds. */
function appliesToCall(rule: CompiledRule, ctx: CallContext): boolean {
  if (rule.unfiltered) return true;
  return (
    rule.tool(ctx.tool) &&
    rule.server(ctx.server) &&
    (rule.ports === null || rule.ports.has(ctx.port)) &&
    (rule.after === null || earlierFor(rule.after, ctx) !== null)
  );
}

/** Step 3, the destination's side: `(host, a)` is on the rule's exemptions (the index already put it in scope). */
function exempted(rule: CompiledRule, name: string | null, ip: IpAddress, carried: Ipv4Address | null): boolean {
  const { exempt } = rule;
  return exempt !== null && (nameOnSet(exempt, name) || addressOnSet(exempt, ip, carried));
}

function exemptedByName(rule: CompiledRule, name: string): boolean {
  return rule.exempt !== null && nameOnSet(rule.exempt, name);
}

/** One call to one destination while the index is walked; `a` and `carried` change per candidate address. */
interface AddressWalk {
  readonly policy: CompiledPolicy;
  readonly ctx: CallContext;
  readonly name: string | null;
  a: IpAddress;
  carried: Ipv4Address | null;
}

/** Step 3 for a rule whose scope holds `(host, a)`: it applies to the call and does not exempt `(host, a)`. */
function matchesAddress(order: number, w: AddressWalk): boolean {
  const rule = w.policy.rules[order] as CompiledRule;
  return appliesToCall(rule, w.ctx) && !exempted(rule, w.name, w.a, w.carried);
}

/** One call to one host name, before any DNS. */
interface NameWalk {
  readonly policy: CompiledPolicy;
  readonly ctx: CallContext;
  readonly name: string;
}

/**
 * Step 7 for a rule in scope by name (or for every destination): it applies to the call and does
 * not exempt the name. A deny rule with address exemptions is passed over: it refuses only the
 * addresses outside them, so it neither refuses every address nor dispatches any.
 */
function takesName(order: number, w: NameWalk): boolean {
  const rule = w.policy.rules[order] as CompiledRule;
  if (rule.verdict === 'deny' && rule.exempt?.hasAddresses) return false;
  return appliesToCall(rule, w.ctx) && !exemptedByName(rule, w.name);
}

/** Step 7 for a dispatching rule with address entries in scope: it may match, and dispatch, some address of the name. */
function mayDispatchSomeAddress(order: number, w: NameWalk): boolean {
  const rule = w.policy.rules[order] as CompiledRule;
  return appliesToCall(rule, w.ctx) && !exemptedByName(rule, w.name);
}

/** The decision's `after` for a deciding rule with a clause (which held, or the rule would not have matched). */
function afterOf(rule: CompiledRule | null, ctx: CallContext): AfterMatch | undefined {
  if (rule === null || rule.after === null) return undefined;
  const e = earlierFor(rule.after, ctx);
  return e === null ? undefined : afterMatch(e, ctx.now);
}

export function decide(
  policy: CompiledPolicy,
  ctx: CallContext,
  dest: DestinationHost,
  addresses: readonly IpAddress[],
  options: DecideOptions = {},
): Decision {
  if (addresses.length === 0) throw new Error('decide needs at least one candidate address');
  ctx = forDecision(policy, ctx);
  const lists = candidates(policy, ctx, dest);
  const trace: TraceEntry[] = [];
  let anyBaseline = false;
  let anyDefault = false;
  const walk: AddressWalk = { policy, ctx, name: dest.name, a: addresses[0] as IpAddress, carried: null };
  for (const a of addresses) {
    // 2. The SSRF baseline first, for every candidate: a hit denies whatever the rules say, and
    //    shadow mode does not soften it.
    const addressClass = options.classify?.(a, ctx.port) ?? null;
    if (addressClass !== null) {
      anyBaseline = true;
      trace.push({
        address: a.text,
        verdict: 'deny',
        decided_by: 'ssrf_baseline',
        rule: null,
        dispatched: false,
        shadow: false,
        address_class: addressClass,
      });
      continue;
    }
    // 3. Walk the rules in order: the first whose tool glob, server glob, ports (and clause) match
    //    and whose scope holds (host, a) without exempting it. An IPv6 `a` is on a list also
    //    through the IPv4 address it carries (entry-set.ts).
    const carried = a.family === 6 ? embeddedIpv4(a) : null;
    walk.a = a;
    walk.carried = carried;
    const first = firstInScope(policy.index, lists, a, carried, matchesAddress, walk);
    const rule = first === Infinity ? null : (policy.rules[first] as CompiledRule);
    // 4. Its verdict is this address's verdict; no match gives default_verdict. Shadow mode
    //    dispatches a deny as "would deny".
    const verdict: EgressVerdict = rule ? rule.verdict : policy.defaultVerdict;
    if (!rule) anyDefault = true;
    const shadow = verdict === 'deny' && policy.shadowMode;
    const after = afterOf(rule, ctx);
    const entry: TraceEntry = {
      address: a.text,
      verdict,
      decided_by: rule ? 'rule' : 'default',
      rule: rule ? rule.ref : null,
      dispatched: verdict !== 'deny' || shadow,
      shadow,
      ...(after ? { after } : {}),
    };
    trace.push(options.explain ? { ...entry, not_matched: explainAddress(policy, ctx, dest.name, a, carried, rule) } : entry);
  }
  // 5. Dispatched only when every candidate is; if any is blocked, the answer names the blocking rule.
  const deciding = mostSevere(trace);
  const decision: Decision = {
    verdict: deciding.verdict,
    dispatched: trace.every((e) => e.dispatched),
    shadow: deciding.shadow,
    reason: deciding.decided_by,
    rule: deciding.rule,
    addresses: addresses.map((a) => a.text),
    trace,
    after: deciding.after ?? null,
    uncovered: policy.observeMode && anyDefault && !anyBaseline,
  };
  return deciding.address_class ? { ...decision, address_class: deciding.address_class } : decision;
}

/**
 * 7. The decision for a host name that the policy blocks whatever it resolves to, refused without
 * any DNS query (resolving it would leak the name to its name server); null when some address
 * could be dispatched, so the name must be resolved and `decide` called.
 *
 * The name is blocked when the first rule that takes it (step 3 on the name alone) is a deny rule,
 * or no rule does and default_verdict is deny, and no rule before that one may dispatch some address.
 */
export function decideByName(
  policy: CompiledPolicy,
  ctx: CallContext,
  dest: DestinationHost & { readonly name: string },
  options: DecideOptions = {},
): Decision | null {
  // Shadow mode dispatches every deny: nothing is refused before resolving.
  if (policy.shadowMode) return null;
  ctx = forDecision(policy, ctx);
  const { index } = policy;
  const { name } = dest;
  const lists = candidates(policy, ctx, dest);
  const walk: NameWalk = { policy, ctx, name };
  // The first rule that takes the name, looked for up to the first dispatching rule that applies to every call and
  // has address entries (it may dispatch some address of any name: the walk reaching it ends in "resolve").
  const bound = index.firstUnconditionalAddressDispatcher;
  const first = firstInLists(lists.everyDestination, firstInLists(lists.byName, bound, takesName, walk), takesName, walk);
  const rule = first === Infinity ? null : (policy.rules[first] as CompiledRule);
  // A dispatching rule before it with address entries in scope may dispatch some address.
  if (firstInList(index.addressDispatchers, first, mayDispatchSomeAddress, walk) < first) return null;
  // 4. A deny rule that takes the name has no address exemption: it matches every address, so its verdict is every
  //    address's (as default_verdict is when no rule takes the name). An allow or audit rule dispatches what it matches.
  if ((rule ? rule.verdict : policy.defaultVerdict) !== 'deny') return null;
  const after = afterOf(rule, ctx);
  const entry: TraceEntry = {
    address: null,
    verdict: 'deny',
    decided_by: rule ? 'rule' : 'default',
    rule: rule ? rule.ref : null,
    dispatched: false,
    shadow: false,
    ...(after ? { after } : {}),
  };
  return {
    verdict: 'deny',
    dispatched: false,
    shadow: false,
    reason: entry.decided_by,
    rule: entry.rule,
    addresses: [],
    trace: [options.explain ? { ...entry, not_matched: explainName(policy, ctx, name, rule) } : entry],
    after: after ?? null,
    uncovered: policy.observeMode && rule === null,
  };
}

/** How much an outcome matters when several are folded into one answer. */
function severity(e: { dispatched: boolean; shadow: boolean; verdict: EgressVerdict }): number {
  if (!e.dispatched) return 3;
  if (e.shadow) return 2;
  return e.verdict === 'audit' ? 1 : 0;
}

/** The first of the most severe outcomes: a refusal, else a shadowed refusal, else an audit. */
export function mostSevere<T extends { dispatched: boolean; shadow: boolean; verdict: EgressVerdict }>(items: readonly T[]): T {
  let chosen = items[0] as T;
  for (const item of items) if (severity(item) > severity(chosen)) chosen = item;
  return chosen;
}

/**
 * Several registered tool calls on one client: each is evaluated and the call is dispatched
 * only if all would be (step 5 over the calls); the answer is the most severe of them.
 */
export function combineDecisions(decisions: readonly Decision[]): Decision {
  if (decisions.length === 1) return decisions[0] as Decision;
  const chosen = mostSevere(decisions);
  return { ...chosen, dispatched: decisions.every((d) => d.dispatched), uncovered: decisions.some((d) => d.uncovered) };
}
