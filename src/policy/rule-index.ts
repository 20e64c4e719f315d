/**
 * The rule index, built by compile: which rules a destination can hit, without walking the rules.
 *
 * Why: a decision must cost about the same with 10 rules or 10,000. Rules are numbered in
 * evaluation order (priority, then file order); each in-scope entry puts its rule's number in a
 * list keyed by what it matches (exact host, wildcard suffix, CIDR network per prefix length), and
 * rules in scope for every destination go in lists of their own. Every list is sorted, so the
 * first rule of a list that the caller accepts is that list's best, and the lowest of those over
 * the lists a destination hits is the first match by priority, exactly.
 *
 * This module is the mechanics only (keys, the /16 bitmask of long IPv4 prefixes, the running
 * "best so far"); what makes a rule match is the caller's `accept` (evaluate.ts, policy.md step 3).
 */
import { v4Key, v6Key } from '../net/address.js';
import type { IpAddress, Ipv4Address } from '../net/address.js';
import { getOrCreate } from './entry-set.js';
import type { EntrySet } from './entry-set.js';
import { isLiteralGlob } from './glob.js';
import type { EgressVerdict } from './types.js';

/** Rule numbers (evaluation order), ascending. */
type Positions = number[];
/** Some index lists, each ascending. */
export type RuleLists = readonly (readonly number[])[];

/** What the index needs of a compiled rule. */
export interface IndexedRule {
  readonly order: number;
  readonly spec: { readonly toolGlob: string };
  readonly verdict: EgressVerdict;
  readonly unfiltered: boolean;
  readonly scope: EntrySet | null;
  readonly exempt: EntrySet | null;
}

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

/** The lists one call to one host can hit before its address is known: by name, and for every destination. */
export interface Candidates {
  readonly byName: RuleLists;
  readonly everyDestination: RuleLists;
}

/** Builds the index of `rules`, given in evaluation order (so that every list is built sorted). */
export function buildRuleIndex(rules: readonly IndexedRule[]): RuleIndex {
  const byHost = new Map<string, Positions>();
  const bySuffix = new Map<string, Positions>();
  const v4 = new Map<number, Map<number, Positions>>();
  const v6 = new Map<number, Map<string, Positions>>();
  const universalByTool = new Map<string, Positions>();
  const universalOther: Positions = [];
  const addressDispatchers: Positions = [];
  let firstUnconditionalAddressDispatcher = Infinity;

  for (const rule of rules) {
    const { order } = rule;
    if (rule.scope === null) {
      if (isLiteralGlob(rule.spec.toolGlob)) getOrCreate(universalByTool, rule.spec.toolGlob, () => []).push(order);
      else universalOther.push(order);
      continue;
    }
    for (const entry of rule.scope.entries) {
      let list: Positions;
      if (entry.kind === 'host') list = getOrCreate(byHost, entry.host, () => []);
      else if (entry.kind === 'wildcard') list = getOrCreate(bySuffix, entry.suffix, () => []);
      else if (entry.cidr.family === 4)
        list = getOrCreate(
          getOrCreate(v4, entry.cidr.prefix, () => new Map<number, Positions>()),
          entry.cidr.key as number,
          () => [],
        );
      else
        list = getOrCreate(
          getOrCreate(v6, entry.cidr.prefix, () => new Map<string, Positions>()),
          entry.cidr.key as string,
          () => [],
        );
      // One rule can list several entries that hit the same key; keep it once.
      if (list[list.length - 1] !== order) list.push(order);
    }
    if (rule.verdict !== 'deny' && rule.scope.hasAddresses) {
      addressDispatchers.push(order);
      const nameExempt = rule.exempt?.hasNames ?? false;
      if (rule.unfiltered && !nameExempt && firstUnconditionalAddressDispatcher === Infinity) firstUnconditionalAddressDispatcher = order;
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
  return {
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
  };
}

/** The lists a host name can hit by name (exact and wildcard entries); none for an IP destination (null). */
export function listsByName(index: RuleIndex, name: string | null): RuleLists {
  const lists: Positions[] = [];
  if (name === null) return lists;
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
  return lists;
}

const NO_LISTS: RuleLists = [];

/** The lists of rules in scope for every destination that a call with this tool can hit. */
export function listsForEveryDestination(index: RuleIndex, tool: string | null): RuleLists {
  const byTool = tool !== null ? index.universalByTool.get(tool) : undefined;
  if (byTool) return index.universalOther.length > 0 ? [byTool, index.universalOther] : [byTool];
  return index.universalOther.length > 0 ? [index.universalOther] : NO_LISTS;
}

/**
 * Whether the rule numbered `order` matches, as the caller defines it; `walk` is the caller's state for the
 * call. A module-level function with its state passed in, not a closure per call: these loops run for every
 * candidate of every call, and a few stable functions keep their call sites cheap.
 */
export type Accept<W> = (order: number, walk: W) => boolean;

/** The lowest rule number below `below` in `list` that `accept` takes, else `below`. */
export function firstInList<W>(list: readonly number[], below: number, accept: Accept<W>, walk: W): number {
  for (let i = 0; i < list.length; i++) {
    const order = list[i] as number;
    if (order >= below) return below;
    if (accept(order, walk)) return order;
  }
  return below;
}

/** The lowest rule number below `below` in any of `lists` that `accept` takes, else `below`. */
export function firstInLists<W>(lists: RuleLists, below: number, accept: Accept<W>, walk: W): number {
  for (const list of lists) below = firstInList(list, below, accept, walk);
  return below;
}

/** `best` lowered by the rules whose IPv4 entries hold `v4`. */
function firstByV4<W>(index: RuleIndex, v4: number, best: number, accept: Accept<W>, walk: W): number {
  for (const [len, keys] of index.v4Short) {
    const list = keys.get(v4Key(v4, len));
    if (list) best = firstInList(list, best, accept, walk);
  }
  // Only the prefix lengths that some entry under this /16 has.
  let lengths = index.v4LongLengths.get(v4 >>> 16) ?? 0;
  while (lengths !== 0) {
    const bit = 31 - Math.clz32(lengths);
    lengths &= ~(1 << bit);
    const list = (index.v4Long[bit + 16] as ReadonlyMap<number, number[]>).get(v4Key(v4, bit + 16));
    if (list) best = firstInList(list, best, accept, walk);
  }
  return best;
}

/**
 * The lowest rule number whose scope holds `(host, ip)` (the candidates by name and for every
 * destination, and the address entries holding `ip`, or through `carried`, the IPv4 address an
 * IPv6 `ip` carries) that `accept` takes; Infinity for none.
 */
export function firstInScope<W>(
  index: RuleIndex,
  candidates: Candidates,
  ip: IpAddress,
  carried: Ipv4Address | null,
  accept: Accept<W>,
  walk: W,
): number {
  let best = firstInLists(candidates.everyDestination, firstInLists(candidates.byName, Infinity, accept, walk), accept, walk);
  if (ip.family === 4) return firstByV4(index, ip.v4, best, accept, walk);
  for (const [len, keys] of index.v6) {
    const list = keys.get(v6Key(ip.hex, len));
    if (list) best = firstInList(list, best, accept, walk);
  }
  return carried !== null ? firstByV4(index, carried.v4, best, accept, walk) : best;
}
