/**
 * A reference evaluator written straight from policy.md, with no index: a loop over the rules
 * sorted by priority and file order. Its glob matcher and CIDR matching (ipaddr.js) are its own,
 * so it shares no matching code with src/policy/ (glob, entry-set, rule-index, evaluate). Sequence clauses:
 * a plain filter over the whole history for the calls that satisfy the clause, the most recent
 * kept (no reliance on the history's order, no memo, no early stop).
 */
import ipaddr from 'ipaddr.js';
import type { IpAddress } from '../../src/net/address.js';
import type { AfterSpec, CallContext, Entry, HistoryCall, PolicySpec, RuleSpec } from '../../src/policy/types.js';

export interface RefResult {
  verdict: 'allow' | 'deny' | 'audit';
  dispatched: boolean;
  shadow: boolean;
  reason: 'rule' | 'default' | 'ssrf_baseline';
  rule: string | null;
  perAddress: Array<string | null>;
  /** The earlier call named by the deciding rule's clause, and how long ago (seconds). */
  after: { call: HistoryCall; secondsAgo: number } | null;
}

export function globMatches(glob: string, subject: string | null): boolean {
  if (/^\*+$/.test(glob)) return true;
  if (subject === null) return false;
  const g = [...glob];
  const s = [...subject];
  const memo = new Map<string, boolean>();
  const go = (i: number, j: number): boolean => {
    const key = `${i},${j}`;
    const cached = memo.get(key);
    if (cached !== undefined) return cached;
    let r: boolean;
    if (i === g.length) r = j === s.length;
    else if (g[i] === '*') r = go(i + 1, j) || (j < s.length && go(i, j + 1));
    else if (j < s.length && (g[i] === '?' || g[i] === s[j])) r = go(i + 1, j + 1);
    else r = false;
    memo.set(key, r);
    return r;
  };
  return go(0, 0);
}

/** policy.md's IPv6 forms that carry an IPv4 address, with the byte offset of the IPv4 in each. */
const CARRIERS: ReadonlyArray<readonly [ipaddr.IPv6, number, number]> = [
  [ipaddr.IPv6.parse('::'), 96, 12], // IPv4-compatible (not :: and ::1, below)
  [ipaddr.IPv6.parse('64:ff9b::'), 96, 12], // NAT64
  [ipaddr.IPv6.parse('2002::'), 16, 2], // 6to4
];

/** The IPv4 address (dotted) that an IPv6 address carries, read from policy.md, or null. */
export function refCarriedIpv4(text: string): string | null {
  const addr = ipaddr.parse(text);
  if (addr.kind() !== 'ipv6') return null;
  const v6 = addr as ipaddr.IPv6;
  if (text === '::' || text === '::1') return null;
  for (const [net, len, offset] of CARRIERS) {
    if (v6.match(net, len))
      return v6
        .toByteArray()
        .slice(offset, offset + 4)
        .join('.');
  }
  return null;
}

function addressOnEntry(entry: Entry & { kind: 'cidr' }, text: string): boolean {
  const addr = ipaddr.parse(text);
  const [net, len] = ipaddr.parseCIDR(entry.cidr.text);
  if (addr.kind() !== net.kind()) return false;
  return addr.match([net, len] as never);
}

function onEntry(entry: Entry, name: string | null, a: IpAddress | null): boolean {
  if (entry.kind === 'host') return name !== null && name === entry.host;
  if (entry.kind === 'wildcard') return name !== null && name.endsWith(`.${entry.suffix}`);
  if (a === null) return false;
  // An IPv6 address that carries an IPv4 one is on an entry as itself or as that IPv4 address.
  const carried = refCarriedIpv4(a.text);
  return addressOnEntry(entry, a.text) || (carried !== null && addressOnEntry(entry, carried));
}

export function sortedEgressRules(spec: PolicySpec): RuleSpec[] {
  return spec.rules
    .filter((r) => r.stage === 'egress' && (r.verdict === 'allow' || r.verdict === 'deny' || r.verdict === 'audit'))
    .sort((x, y) => x.priority - y.priority || x.position - y.position);
}

/**
 * policy.md "Earlier call": recorded at most `within_seconds` before now (a time after now is
 * taken as now), another call id (or either has none), the globs, and with `hosts` a dispatched
 * egress call whose host or dialled address is on the list. The most recent such call, or null.
 */
export function refEarlier(after: AfterSpec, ctx: CallContext): HistoryCall | null {
  let best: HistoryCall | null = null;
  for (const e of ctx.history) {
    const age = Math.max(0, ctx.now - e.at);
    if (age > after.withinSeconds * 1000) continue;
    if (ctx.callId !== null && e.callId !== null && e.callId === ctx.callId) continue;
    if (!globMatches(after.toolGlob, e.tool) || !globMatches(after.serverGlob, e.server)) continue;
    if (after.hosts !== null && !(e.dispatched === true && after.hosts.some((entry) => onEntry(entry, e.host, e.address)))) continue;
    if (best === null || e.at > best.at) best = e;
  }
  return best;
}

function appliesTo(rule: RuleSpec, ctx: CallContext): boolean {
  return (
    globMatches(rule.toolGlob, ctx.tool) &&
    globMatches(rule.serverGlob, ctx.server) &&
    (rule.ports === null || rule.ports.includes(ctx.port)) &&
    (rule.after === null || refEarlier(rule.after, ctx) !== null)
  );
}

function sides(rule: RuleSpec): { scope: readonly Entry[]; exempt: readonly Entry[] } {
  const lists = rule.lists as NonNullable<RuleSpec['lists']>;
  return rule.verdict === 'allow' ? { scope: lists.allow, exempt: lists.deny } : { scope: lists.deny, exempt: lists.allow };
}

export function refMatch(spec: PolicySpec, ctx: CallContext, name: string | null, a: IpAddress): RuleSpec | null {
  for (const rule of sortedEgressRules(spec)) {
    if (!appliesTo(rule, ctx)) continue;
    if (rule.lists === null) return rule;
    const { scope, exempt } = sides(rule);
    const inScope = scope.length === 0 || scope.some((e) => onEntry(e, name, a));
    const isExempt = exempt.some((e) => onEntry(e, name, a));
    if (inScope && !isExempt) return rule;
  }
  return null;
}

export function refDecide(
  spec: PolicySpec,
  ctx: CallContext,
  name: string | null,
  addresses: IpAddress[],
  classify: (a: IpAddress) => string | null = () => null,
): RefResult {
  const outcomes = addresses.map((a) => {
    if (classify(a) !== null)
      return { verdict: 'deny' as const, dispatched: false, shadow: false, reason: 'ssrf_baseline' as const, rule: null, after: null };
    const rule = refMatch(spec, ctx, name, a);
    const verdict = rule ? (rule.verdict as 'allow' | 'deny' | 'audit') : spec.defaultVerdict;
    const shadow = verdict === 'deny' && spec.shadowMode;
    const earlier = rule?.after ? refEarlier(rule.after, ctx) : null;
    const after = earlier === null ? null : { call: earlier, secondsAgo: Math.max(0, ctx.now - earlier.at) / 1000 };
    return {
      verdict,
      dispatched: verdict !== 'deny' || shadow,
      shadow,
      reason: rule ? ('rule' as const) : ('default' as const),
      rule: rule?.id ?? null,
      after,
    };
  });
  const rank = (o: (typeof outcomes)[number]) => (!o.dispatched ? 3 : o.shadow ? 2 : o.verdict === 'audit' ? 1 : 0);
  let chosen = outcomes[0] as (typeof outcomes)[number];
  for (const o of outcomes) if (rank(o) > rank(chosen)) chosen = o;
  return { ...chosen, dispatched: outcomes.every((o) => o.dispatched), perAddress: outcomes.map((o) => o.rule) };
}

/**
 * Step 7 from policy.md, by reasoning over one rule at a time: does each rule match every
 * address of `name`, none, or only some? Returns the blocking rule id ('' for the default) when
 * the name is blocked whatever it resolves to, else null.
 */
export function refBlockedByName(spec: PolicySpec, ctx: CallContext, name: string): string | null {
  if (spec.shadowMode) return null;
  for (const rule of sortedEgressRules(spec)) {
    if (!appliesTo(rule, ctx)) continue;
    let reach: 'all' | 'none' | 'some';
    if (rule.lists === null) reach = 'all';
    else {
      const { scope, exempt } = sides(rule);
      const exemptByName = exempt.some((e) => onEntry(e, name, null));
      const exemptHasAddresses = exempt.some((e) => e.kind === 'cidr');
      const scopeByName = scope.length === 0 || scope.some((e) => onEntry(e, name, null));
      const scopeHasAddresses = scope.some((e) => e.kind === 'cidr');
      if (exemptByName) reach = 'none';
      else if (scopeByName) reach = exemptHasAddresses ? 'some' : 'all';
      else reach = scopeHasAddresses ? 'some' : 'none';
    }
    if (reach === 'none') continue;
    if (reach === 'all') return rule.verdict === 'deny' ? rule.id : null;
    if (rule.verdict !== 'deny') return null;
  }
  return spec.defaultVerdict === 'deny' ? '' : null;
}
