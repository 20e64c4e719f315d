/**
 * Compiles a validated PolicySpec into an immutable evaluator with indexes.
 *
 * Why indexes: a decision must cost about the same with 10 rules or 10,000. Rules are sorted
 * (priority, then file order) and numbered; each in-scope entry puts its rule's number in a map
 * keyed by what it matches (exact host, wildcard suffix, CIDR network per prefix length). A
 * decision looks up only the lists its host and address can hit, plus the rules that are in
 * scope for every destination, and takes the lowest-numbered rule that fully matches. Because
 * every list is sorted, the first full match in each list is that list's best, so first-match-
 * by-priority stays exact without walking the rules.
 *
 * A rule with a sequence clause (`after`) sits in the same indexes; its clause is one more
 * condition, checked only for a rule that otherwise matches. Clauses that differ at most in
 * their window share one matcher (the most recent matching call decides every window: it is in
 * a window or nothing is), so a decision scans the history once per distinct matcher at most.
 * A policy with no clause compiles exactly as before: its decisions cost what they did.
 */
import { v4Key, v6Key } from '../net/address.js';
import type { IpAddress, Ipv4Address } from '../net/address.js';
import { compileGlob, isLiteralGlob, isMatchAll } from './glob.js';
import type { GlobMatcher } from './glob.js';
import { isEnforcedVerdict } from './schema.js';
import type { AfterSpec, EgressVerdict, Entry, PolicySpec, RuleRef, RuleSpec } from './types.js';

/** A set of destination entries, indexed for membership tests. */
export interface EntrySet {
  readonly entries: readonly Entry[];
  readonly hosts: ReadonlySet<string>;
  readonly suffixes: ReadonlySet<string>;
  readonly v4: ReadonlyMap<number, ReadonlySet<number>>;
  readonly v6: ReadonlyMap<number, ReadonlySet<string>>;
  readonly hasNames: boolean;
  readonly hasAddresses: boolean;
}

/** What an earlier call must be (a clause without its window); shared by clauses that differ only in the window. */
export interface AfterMatcher {
  /** 0, 1, 2... within one compiled policy: the slot of a decision's memo. */
  readonly id: number;
  readonly tool: GlobMatcher;
  readonly server: GlobMatcher;
  readonly hosts: EntrySet | null;
  /** The longest window among the clauses sharing it: how far back its scan looks. */
  readonly scanMs: number;
}

/** A compiled sequence clause. */
export interface CompiledAfter {
  readonly spec: AfterSpec;
  readonly match: AfterMatcher;
  readonly withinMs: number;
}

export interface CompiledRule {
  /** Index in `CompiledPolicy.rules`: evaluation order. */
  readonly order: number;
  readonly spec: RuleSpec;
  readonly ref: RuleRef;
  readonly verdict: EgressVerdict;
  readonly tool: GlobMatcher;
  readonly server: GlobMatcher;
  readonly ports: ReadonlySet<number> | null;
  /** Applies to every call whatever its tool, server and port. */
  readonly unfiltered: boolean;
  /** The in-scope set; null when every destination is in scope (no list, or an empty one). */
  readonly scope: EntrySet | null;
  readonly scopeSide: 'allow' | 'deny' | null;
  readonly exempt: EntrySet | null;
  readonly exemptSide: 'allow' | 'deny' | null;
  /** The sequence clause; such a rule is never `unfiltered` (it depends on the history). */
  readonly after: CompiledAfter | null;
}

type Positions = number[];

export interface RuleIndex {
  readonly byHost: ReadonlyMap<string, Positions>;
  readonly bySuffix: ReadonlyMap<string, Positions>;
  /** The fewest and most labels of any wildcard suffix (lookups outside that range cannot hit). */
  readonly minSuffixLabels: number;
  readonly maxSuffixLabels: number;
  /** IPv4 prefixes shorter than /16: per length, network key → rules. */
  readonly v4Short: ReadonlyArray<readonly [number, ReadonlyMap<number, Positions>]>;
  /** IPv4 prefixes of /16 and longer: per length (index), network key → rules. */
  readonly v4Long: ReadonlyArray<ReadonlyMap<number, Positions> | undefined>;
  /** For each /16 that holds such a prefix: bit (len - 16) set for each length present there. */
  readonly v4LongLengths: ReadonlyMap<number, number>;
  readonly v6: ReadonlyArray<readonly [number, ReadonlyMap<string, Positions>]>;
  /** Rules in scope for every destination, split by tool so that many tool-specific catch-alls stay cheap. */
  readonly universalByTool: ReadonlyMap<string, Positions>;
  readonly universalOther: Positions;
  /** Pre-resolution: dispatching rules whose scope has address entries (they may dispatch some address). */
  readonly addressDispatchers: Positions;
  /** The first of those that applies to every call and has no name exemption. */
  readonly firstUnconditionalAddressDispatcher: number;
}

export interface CompiledPolicy {
  readonly spec: PolicySpec;
  readonly defaultVerdict: 'allow' | 'deny';
  readonly shadowMode: boolean;
  readonly observeMode: boolean;
  /** Enforced egress rules in evaluation order. */
  readonly rules: readonly CompiledRule[];
  /** Every rule of the file in evaluation order, skipped ones included (for explanations). */
  readonly allRules: readonly RuleSpec[];
  readonly index: RuleIndex;
  /** Whether some enforced egress rule has a sequence clause (the data path fetches history only then). */
  readonly hasSequenceRules: boolean;
  /** The longest `within_seconds` among enforced egress rules; 0 without sequence clauses (history retention). */
  readonly maxAfterSeconds: number;
  /** Distinct clause matchers (the size of a decision's memo). */
  readonly afterClauses: number;
}

export function byEvaluationOrder(a: RuleSpec, b: RuleSpec): number {
  return a.priority - b.priority || a.position - b.position;
}

export function compileEntrySet(entries: readonly Entry[]): EntrySet {
  const hosts = new Set<string>();
  const suffixes = new Set<string>();
  const v4 = new Map<number, Set<number>>();
  const v6 = new Map<number, Set<string>>();
  for (const entry of entries) {
    if (entry.kind === 'host') hosts.add(entry.host);
    else if (entry.kind === 'wildcard') suffixes.add(entry.suffix);
    else if (entry.cidr.family === 4) getOrCreate(v4, entry.cidr.prefix, () => new Set()).add(entry.cidr.key as number);
    else getOrCreate(v6, entry.cidr.prefix, () => new Set()).add(entry.cidr.key as string);
  }
  return {
    entries,
    hosts,
    suffixes,
    v4,
    v6,
    hasNames: hosts.size + suffixes.size > 0,
    hasAddresses: v4.size + v6.size > 0,
  };
}

/** Whether `name` (a canonical host name, or null for an IP destination) is on the set by name. */
export function nameOnSet(set: EntrySet, name: string | null): boolean {
  if (name === null || !set.hasNames) return false;
  if (set.hosts.has(name)) return true;
  if (set.suffixes.size === 0) return false;
  for (let dot = name.indexOf('.'); dot !== -1; dot = name.indexOf('.', dot + 1)) {
    if (set.suffixes.has(name.slice(dot + 1))) return true;
  }
  return false;
}

/**
 * Whether `ip` is on the set by address. `carried` is the IPv4 address `ip` carries
 * (embeddedIpv4): such an IPv6 address is on the set as itself or through the IPv4 it carries.
 */
export function addressOnSet(set: EntrySet, ip: IpAddress, carried: Ipv4Address | null = null): boolean {
  if (ip.family === 4) return v4OnSet(set, ip.v4);
  for (const [len, keys] of set.v6) if (keys.has(v6Key(ip.hex, len))) return true;
  return carried !== null && v4OnSet(set, carried.v4);
}

function v4OnSet(set: EntrySet, v4: number): boolean {
  for (const [len, keys] of set.v4) if (keys.has(v4Key(v4, len))) return true;
  return false;
}

function matcherKey(spec: AfterSpec): string {
  const hosts = spec.hosts === null ? null : spec.hosts.map((e) => (e.kind === 'cidr' ? e.cidr.text : e.kind === 'host' ? e.host : `*.${e.suffix}`)).sort();
  return JSON.stringify([spec.toolGlob, spec.serverGlob, hosts]);
}

/** Compiles a clause, sharing its matcher with earlier clauses that differ only in the window. */
function compileAfter(spec: AfterSpec, matchers: Map<string, { -readonly [K in keyof AfterMatcher]: AfterMatcher[K] }>): CompiledAfter {
  const key = matcherKey(spec);
  const withinMs = spec.withinSeconds * 1000;
  let match = matchers.get(key);
  if (!match) {
    match = { id: matchers.size, tool: compileGlob(spec.toolGlob), server: compileGlob(spec.serverGlob), hosts: spec.hosts === null ? null : compileEntrySet(spec.hosts), scanMs: withinMs };
    matchers.set(key, match);
  }
  match.scanMs = Math.max(match.scanMs, withinMs);
  return { spec, match, withinMs };
}

export function compileRule(spec: RuleSpec, order: number, clauses: Map<string, AfterMatcher & { scanMs: number }> = new Map()): CompiledRule {
  const verdict = spec.verdict as EgressVerdict;
  // On an allow rule the allow list is in scope and deny exempts; on deny/audit the reverse.
  const scopeSide = spec.lists ? (verdict === 'allow' ? 'allow' : 'deny') : null;
  const exemptSide = scopeSide === 'allow' ? 'deny' : scopeSide === 'deny' ? 'allow' : null;
  const scopeEntries = scopeSide && spec.lists ? spec.lists[scopeSide] : [];
  const exemptEntries = exemptSide && spec.lists ? spec.lists[exemptSide] : [];
  const ports = spec.ports ? new Set(spec.ports) : null;
  return {
    order,
    spec,
    ref: { id: spec.id, label: spec.label, priority: spec.priority },
    verdict,
    tool: compileGlob(spec.toolGlob),
    server: compileGlob(spec.serverGlob),
    ports,
    unfiltered: isMatchAll(spec.toolGlob) && isMatchAll(spec.serverGlob) && ports === null && spec.after === null,
    scope: scopeEntries.length > 0 ? compileEntrySet(scopeEntries) : null,
    scopeSide: scopeEntries.length > 0 ? scopeSide : null,
    exempt: exemptEntries.length > 0 ? compileEntrySet(exemptEntries) : null,
    exemptSide: exemptEntries.length > 0 ? exemptSide : null,
    after: spec.after === null ? null : compileAfter(spec.after, clauses),
  };
}

export function compilePolicy(spec: PolicySpec): CompiledPolicy {
  const allRules = [...spec.rules].sort(byEvaluationOrder);
  const enforced = allRules.filter((r) => r.stage === 'egress' && isEnforcedVerdict(r.verdict));
  const clauses = new Map<string, AfterMatcher & { scanMs: number }>();
  const rules = enforced.map((spec, order) => compileRule(spec, order, clauses));
  let maxAfterSeconds = 0;
  for (const rule of rules) if (rule.after !== null) maxAfterSeconds = Math.max(maxAfterSeconds, rule.after.spec.withinSeconds);

  const byHost = new Map<string, Positions>();
  const bySuffix = new Map<string, Positions>();
  const v4 = new Map<number, Map<number, Positions>>();
  const v6 = new Map<number, Map<string, Positions>>();
  const universalByTool = new Map<string, Positions>();
  const universalOther: Positions = [];
  const addressDispatchers: Positions = [];
  let firstUnconditionalAddressDispatcher = Infinity;

  // Rules are visited in evaluation order, so every list is built already sorted.
  for (const rule of rules) {
    const { order } = rule;
    if (rule.scope === null) {
      if (isLiteralGlob(rule.spec.toolGlob)) getOrCreate(universalByTool, rule.spec.toolGlob, () => []).push(order);
      else universalOther.push(order);
    } else {
      for (const entry of rule.scope.entries) {
        let list: Positions;
        if (entry.kind === 'host') list = getOrCreate(byHost, entry.host, () => []);
        else if (entry.kind === 'wildcard') list = getOrCreate(bySuffix, entry.suffix, () => []);
        else if (entry.cidr.family === 4) list = getOrCreate(getOrCreate(v4, entry.cidr.prefix, () => new Map()), entry.cidr.key as number, () => []);
        else list = getOrCreate(getOrCreate(v6, entry.cidr.prefix, () => new Map()), entry.cidr.key as string, () => []);
        // One rule can list several entries that hit the same key; keep it once.
        if (list[list.length - 1] !== order) list.push(order);
      }
      if (rule.verdict !== 'deny' && rule.scope.hasAddresses) {
        addressDispatchers.push(order);
        const nameExempt = rule.exempt?.hasNames ?? false;
        if (rule.unfiltered && !nameExempt && firstUnconditionalAddressDispatcher === Infinity) {
          firstUnconditionalAddressDispatcher = order;
        }
      }
    }
  }

  const suffixLabels = [...bySuffix.keys()].map((k) => k.split('.').length);
  const v4Long: Array<Map<number, Positions> | undefined> = [];
  const v4LongLengths = new Map<number, number>();
  for (const [len, keys] of v4) {
    if (len < 16) continue;
    v4Long[len] = keys;
    for (const key of keys.keys()) {
      const slash16 = (key >>> 0) >>> (len - 16);
      v4LongLengths.set(slash16, (v4LongLengths.get(slash16) ?? 0) | (1 << (len - 16)));
    }
  }
  const longestFirst = <K>(m: Map<number, Map<K, Positions>>) => [...m.entries()].sort((a, b) => b[0] - a[0]);
  return Object.freeze({
    spec,
    defaultVerdict: spec.defaultVerdict,
    shadowMode: spec.shadowMode,
    observeMode: spec.observeMode,
    rules,
    allRules,
    index: {
      byHost,
      bySuffix,
      minSuffixLabels: suffixLabels.length > 0 ? Math.min(...suffixLabels) : Infinity,
      maxSuffixLabels: suffixLabels.length > 0 ? Math.max(...suffixLabels) : 0,
      v4Short: longestFirst(v4).filter(([len]) => len < 16),
      v4Long,
      v4LongLengths,
      v6: longestFirst(v6),
      universalByTool,
      universalOther,
      addressDispatchers,
      firstUnconditionalAddressDispatcher,
    },
    hasSequenceRules: clauses.size > 0,
    maxAfterSeconds,
    afterClauses: clauses.size,
  });
}

function getOrCreate<K, V>(map: Map<K, V>, key: K, make: () => V): V {
  let value = map.get(key);
  if (value === undefined) {
    value = make();
    map.set(key, value);
  }
  return value;
}
