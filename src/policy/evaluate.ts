/**
 * Evaluates one call against a compiled policy, exactly as policy.md "Evaluating one connection"
 * says. Pure: the data path resolves names and passes the candidate addresses in.
 *
 *   decideByName  step 7: a name the policy blocks whatever it resolves to is refused before
 *                 any DNS query (resolving it would leak the name to its name server).
 *   decide        steps 2-5: for each candidate address, the SSRF baseline first (not softened by
 *                 shadow mode), then the first matching rule by priority and file order, else
 *                 the default verdict; shadow mode downgrades deny to a dispatched "would deny";
 *                 the call is dispatched only if every candidate is.
 *
 * Either returns a Decision: the deciding rule, the reason, and a trace per candidate; with
 * `explain`, the trace also says why each earlier rule did not match.
 *
 * An IPv6 candidate that carries an IPv4 address (IPv4-compatible, NAT64, 6to4: embeddedIpv4,
 * the baseline's own reading) is on a list as itself or through the IPv4 it carries, so
 * `deny: [93.184.216.0/24]` catches `64:ff9b::93.184.216.34`: on a network with NAT64 that
 * address reaches the denied IPv4 host. This holds for every list (scope and exemptions alike).
 *
 * Sequence clauses (`after`): the call's history is part of its input (CallContext), never a
 * reason to look anything up. A clause does not depend on the destination, so for one call it
 * either holds or not: a rule whose clause fails is absent for that call, in `decide` and in the
 * by-name step alike (it neither blocks a name nor stops a later rule from blocking it), and a
 * rule whose clause holds is an ordinary rule. Each distinct clause is evaluated at most once per
 * decision (a memo carried with the call), and only when a rule that has it otherwise matches.
 */
import { cidrContains, embeddedIpv4, v4Key, v6Key } from '../net/address.js';
import type { IpAddress, Ipv4Address } from '../net/address.js';
import { addressOnSet, nameOnSet } from './compile.js';
import type { AfterMatcher, CompiledAfter, CompiledPolicy, CompiledRule } from './compile.js';
import type { AfterMatch, CallContext, Decision, EgressVerdict, Entry, HistoryCall, NotMatched, RuleSpec, TraceEntry } from './types.js';

/** The SSRF baseline, injected: the address class that refuses `ip`, or null. */
export type Classify = (ip: IpAddress, port: number) => string | null;

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
  readonly nameLists?: readonly (readonly number[])[];
}

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
  return { ...ctx, afterMemo: new Array(policy.afterClauses) } as SequenceCall;
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
    if (hosts !== null && !(e.dispatched === true && (nameOnSet(hosts, e.host) || (e.address !== null && addressOnSet(hosts, e.address, e.address.family === 6 ? embeddedIpv4(e.address) : null))))) continue;
    return e;
  }
  return null;
}

/**
 * The earlier call satisfying `clause` (the most recent), or null. The matcher's answer is
 * memoised for the decision when the call carries a memo; the window is this clause's own.
 */
function earlierFor(clause: CompiledAfter, ctx: CallContext): HistoryCall | null {
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
  return { call_id: e.callId, tool: e.tool, server: e.server, session_id: e.sessionId, host: e.host, seconds_ago: Math.max(0, Math.round(now - e.at)) / 1000 };
}

function applies(rule: CompiledRule, ctx: CallContext): boolean {
  if (rule.unfiltered) return true;
  return rule.tool(ctx.tool) && rule.server(ctx.server) && (rule.ports === null || rule.ports.has(ctx.port)) && (rule.after === null || earlierFor(rule.after, ctx) !== null);
}

/** The trace's `after` for a deciding rule with a clause (which held, or the rule would not have matched). */
function afterOf(rule: CompiledRule | null, ctx: CallContext): AfterMatch | undefined {
  if (rule === null || rule.after === null) return undefined;
  const e = earlierFor(rule.after, ctx);
  return e === null ? undefined : afterMatch(e, ctx.now);
}

function exemptFor(rule: CompiledRule, name: string | null, ip: IpAddress, carried: Ipv4Address | null): boolean {
  const exempt = rule.exempt;
  return exempt !== null && (nameOnSet(exempt, name) || addressOnSet(exempt, ip, carried));
}

/** The index lists a host name can hit by name (exact and wildcard entries). */
export function lookupName(policy: CompiledPolicy, name: string | null): DestinationHost {
  const { index } = policy;
  const lists: number[][] = [];
  if (name !== null) {
    const exact = index.byHost.get(name);
    if (exact) lists.push(exact);
    if (index.bySuffix.size > 0) {
      // Only suffixes with as many labels as some wildcard entry has can hit.
      let labels = 1;
      for (let i = name.indexOf('.'); i !== -1; i = name.indexOf('.', i + 1)) labels++;
      for (let dot = name.indexOf('.'); dot !== -1; dot = name.indexOf('.', dot + 1)) {
        labels--;
        if (labels > index.maxSuffixLabels) continue;
        if (labels < index.minSuffixLabels) break;
        const list = index.bySuffix.get(name.slice(dot + 1));
        if (list) lists.push(list);
      }
    }
  }
  return { name, nameLists: lists };
}

/** The lists of rules in scope for every destination that this call's tool can hit. */
function universalLists(policy: CompiledPolicy, ctx: CallContext): readonly (readonly number[])[] {
  const { index } = policy;
  const byTool = ctx.tool !== null ? index.universalByTool.get(ctx.tool) : undefined;
  if (byTool) return index.universalOther.length > 0 ? [byTool, index.universalOther] : [byTool];
  return index.universalOther.length > 0 ? [index.universalOther] : NO_LISTS;
}

const NO_LISTS: readonly (readonly number[])[] = [];

/** The name lists of `dest` (looked up now if the caller did not) and this call's universal lists. */
function candidateLists(policy: CompiledPolicy, ctx: CallContext, dest: DestinationHost): readonly [readonly (readonly number[])[], readonly (readonly number[])[]] {
  return [dest.nameLists ?? lookupName(policy, dest.name).nameLists ?? NO_LISTS, universalLists(policy, ctx)];
}

/**
 * The lowest rule order in `list` below `best` that fully matches, else `best`. `carried` is the
 * IPv4 address `ip` carries (embeddedIpv4), passed alongside rather than in an object: this runs
 * for every candidate of every call.
 */
function scan(policy: CompiledPolicy, list: readonly number[], best: number, ctx: CallContext, name: string | null, ip: IpAddress, carried: Ipv4Address | null): number {
  for (let i = 0; i < list.length; i++) {
    const order = list[i] as number;
    if (order >= best) return best;
    const rule = policy.rules[order] as CompiledRule;
    if (applies(rule, ctx) && !exemptFor(rule, name, ip, carried)) return order;
  }
  return best;
}

/** `best` lowered by the rules whose IPv4 entries hold `v4`. */
function scanV4(policy: CompiledPolicy, v4: number, best: number, ctx: CallContext, name: string | null, ip: IpAddress, carried: Ipv4Address | null): number {
  const { index } = policy;
  for (const [len, keys] of index.v4Short) {
    const list = keys.get(v4Key(v4, len));
    if (list) best = scan(policy, list, best, ctx, name, ip, carried);
  }
  // Only the prefix lengths that some entry under this /16 has.
  let lengths = index.v4LongLengths.get(v4 >>> 16) ?? 0;
  while (lengths !== 0) {
    const bit = 31 - Math.clz32(lengths);
    lengths &= ~(1 << bit);
    const list = (index.v4Long[bit + 16] as ReadonlyMap<number, number[]>).get(v4Key(v4, bit + 16));
    if (list) best = scan(policy, list, best, ctx, name, ip, carried);
  }
  return best;
}

/** The first rule (evaluation order) matching `(name, address)` for this call, or -1. */
function firstMatch(policy: CompiledPolicy, ctx: CallContext, name: string | null, lists: readonly [readonly (readonly number[])[], readonly (readonly number[])[]], ip: IpAddress, carried: Ipv4Address | null): number {
  let best = Infinity;
  for (const group of lists) for (const list of group) best = scan(policy, list, best, ctx, name, ip, carried);
  if (ip.family === 4) return finish(scanV4(policy, ip.v4, best, ctx, name, ip, null));
  for (const [len, keys] of policy.index.v6) {
    const list = keys.get(v6Key(ip.hex, len));
    if (list) best = scan(policy, list, best, ctx, name, ip, carried);
  }
  // IPv4 entries reach an IPv6 address through the IPv4 address it carries.
  if (carried !== null) best = scanV4(policy, carried.v4, best, ctx, name, ip, carried);
  return finish(best);
}

function finish(best: number): number {
  return best === Infinity ? -1 : best;
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

export function decide(
  policy: CompiledPolicy,
  ctx: CallContext,
  dest: DestinationHost,
  addresses: readonly IpAddress[],
  options: DecideOptions = {},
): Decision {
  if (addresses.length === 0) throw new Error('decide needs at least one candidate address');
  ctx = forDecision(policy, ctx);
  const lists = candidateLists(policy, ctx, dest);
  const trace: TraceEntry[] = [];
  let anyBaseline = false;
  let anyDefault = false;
  for (const ip of addresses) {
    const addressClass = options.classify?.(ip, ctx.port) ?? null;
    if (addressClass !== null) {
      anyBaseline = true;
      trace.push({ address: ip.text, verdict: 'deny', decided_by: 'ssrf_baseline', rule: null, dispatched: false, shadow: false, address_class: addressClass });
      continue;
    }
    const carried = ip.family === 6 ? embeddedIpv4(ip) : null;
    const order = firstMatch(policy, ctx, dest.name, lists, ip, carried);
    const rule = order >= 0 ? (policy.rules[order] as CompiledRule) : null;
    const verdict: EgressVerdict = rule ? rule.verdict : policy.defaultVerdict;
    if (!rule) anyDefault = true;
    const shadow = verdict === 'deny' && policy.shadowMode;
    const after = afterOf(rule, ctx);
    const entry: TraceEntry = {
      address: ip.text,
      verdict,
      decided_by: rule ? 'rule' : 'default',
      rule: rule ? rule.ref : null,
      dispatched: verdict !== 'deny' || shadow,
      shadow,
      ...(after ? { after } : {}),
    };
    trace.push(options.explain ? { ...entry, not_matched: explainAddress(policy, ctx, dest.name, ip, carried, order) } : entry);
  }
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
 * Step 7: the decision for a host name that the policy blocks whatever it resolves to, or null
 * when some address could be dispatched (the name must be resolved and `decide` called).
 *
 * Walks what the name can hit by name (exact, wildcard, every-destination rules) for the first
 * rule that matches every address (B), and the dispatching rules that may match some address
 * (D). Blocked without DNS exactly when no D comes before B and B (or the default) blocks.
 */
export function decideByName(policy: CompiledPolicy, ctx: CallContext, dest: DestinationHost & { readonly name: string }, options: DecideOptions = {}): Decision | null {
  if (policy.shadowMode) return null;
  ctx = forDecision(policy, ctx);
  const { index } = policy;
  const { name } = dest;
  let allMatch = Infinity;
  let mayDispatch = index.firstUnconditionalAddressDispatcher;
  for (const group of candidateLists(policy, ctx, dest)) for (const list of group) {
    for (let i = 0; i < list.length; i++) {
      const order = list[i] as number;
      if (order >= allMatch || order >= mayDispatch) break;
      const rule = policy.rules[order] as CompiledRule;
      if (!applies(rule, ctx) || (rule.exempt !== null && nameOnSet(rule.exempt, name))) continue;
      if (rule.exempt?.hasAddresses) {
        // Matches only the addresses its exemptions leave: a blocker here blocks some, not all.
        if (rule.verdict === 'deny') continue;
        mayDispatch = order;
      } else {
        allMatch = order;
      }
      break;
    }
  }
  for (const order of index.addressDispatchers) {
    if (order >= allMatch || order >= mayDispatch) break;
    const rule = policy.rules[order] as CompiledRule;
    if (applies(rule, ctx) && !(rule.exempt !== null && nameOnSet(rule.exempt, name))) {
      mayDispatch = order;
      break;
    }
  }
  if (mayDispatch < allMatch) return null;
  const rule = allMatch === Infinity ? null : (policy.rules[allMatch] as CompiledRule);
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

/**
 * Several registered tool calls on one client: each is evaluated and the call is dispatched
 * only if all would be; the answer is the most severe of them.
 */
export function combineDecisions(decisions: readonly Decision[]): Decision {
  if (decisions.length === 1) return decisions[0] as Decision;
  const chosen = mostSevere(decisions);
  return { ...chosen, dispatched: decisions.every((d) => d.dispatched), uncovered: decisions.some((d) => d.uncovered) };
}

// ---- explanations (explain mode only; never on the proxy's hot path) ----

function describeCall(ctx: CallContext, what: 'tool' | 'server'): string {
  const value = what === 'tool' ? ctx.tool : ctx.server;
  return value === null ? `an unattributed call (no ${what})` : `${what} '${value}'`;
}

function filterMiss(rule: CompiledRule, ctx: CallContext): string | null {
  if (!rule.tool(ctx.tool)) return `tool_name_glob '${rule.spec.toolGlob}' does not match ${describeCall(ctx, 'tool')}`;
  if (!rule.server(ctx.server)) return `server_glob '${rule.spec.serverGlob}' does not match ${describeCall(ctx, 'server')}`;
  if (rule.ports !== null && !rule.ports.has(ctx.port)) return `port ${ctx.port} is not in ports [${rule.spec.ports?.join(', ')}]`;
  return null;
}

/** Why a rule's sequence clause did not hold for this call, or null when it did (or there is none). */
function afterMiss(rule: CompiledRule, ctx: CallContext): string | null {
  if (rule.after === null || earlierFor(rule.after, ctx) !== null) return null;
  return `no earlier call matching after within ${rule.after.spec.withinSeconds} s`;
}

/** Whether one entry holds `(name, ip)`; `carried` as in addressOnSet. */
export function entryMatches(entry: Entry, name: string | null, ip: IpAddress | null, carried: Ipv4Address | null = null): boolean {
  if (entry.kind === 'host') return name !== null && name === entry.host;
  if (entry.kind === 'wildcard') return name !== null && name.endsWith(`.${entry.suffix}`);
  return ip !== null && (cidrContains(entry.cidr, ip) || (carried !== null && cidrContains(entry.cidr, carried)));
}

function skippedReason(spec: RuleSpec): string | null {
  if (spec.stage !== 'egress') return `stage ${spec.stage} is not evaluated by the egress proxy`;
  if (spec.verdict === 'pending_approval' || spec.verdict === 'cap_cost') return `verdict ${spec.verdict} is not enforced on the egress surface`;
  return null;
}

/** Why each rule before `upTo` (a compiled rule order, or -1 for none) did not match. */
function walkBefore(policy: CompiledPolicy, upTo: CompiledRule | null, why: (rule: CompiledRule) => string): NotMatched[] {
  const compiled = new Map(policy.rules.map((r) => [r.spec, r] as const));
  const out: NotMatched[] = [];
  for (const spec of policy.allRules) {
    const rule = compiled.get(spec);
    if (upTo && rule === upTo) break;
    out.push({ rule: spec.id, why: rule ? why(rule) : (skippedReason(spec) as string) });
  }
  return out;
}

function explainAddress(policy: CompiledPolicy, ctx: CallContext, name: string | null, ip: IpAddress, carried: Ipv4Address | null, order: number): NotMatched[] {
  const dest = name ?? ip.text;
  const address = carried ? `${ip.text}, carrying ${carried.text}` : ip.text;
  return walkBefore(policy, order >= 0 ? (policy.rules[order] as CompiledRule) : null, (rule) => {
    const miss = filterMiss(rule, ctx);
    if (miss) return miss;
    if (rule.scope && !nameOnSet(rule.scope, name) && !addressOnSet(rule.scope, ip, carried)) {
      return `${dest} (${address}) is not on the ${rule.scopeSide} list`;
    }
    const hit = rule.exempt?.entries.find((e) => entryMatches(e, name, ip, carried));
    if (hit) return `exempt: ${dest} (${address}) matches ${rule.exemptSide} entry '${hit.text}'`;
    /* c8 ignore next */
    return afterMiss(rule, ctx) ?? 'did not match';
  });
}

function explainName(policy: CompiledPolicy, ctx: CallContext, name: string, upTo: CompiledRule | null): NotMatched[] {
  return walkBefore(policy, upTo, (rule) => {
    const miss = filterMiss(rule, ctx);
    if (miss) return miss;
    const hit = rule.exempt?.entries.find((e) => entryMatches(e, name, null));
    if (hit) return `exempt: ${name} matches ${rule.exemptSide} entry '${hit.text}'`;
    if (rule.scope && !nameOnSet(rule.scope, name)) {
      return rule.scope.hasAddresses
        ? `${name} is not on the ${rule.scopeSide} list by name; its address entries can only refuse some addresses`
        : `${name} is not on the ${rule.scopeSide} list`;
    }
    return afterMiss(rule, ctx) ?? `matches only addresses outside its ${rule.exemptSide} exemptions; does not refuse every address`;
  });
}
