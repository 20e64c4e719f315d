/**
 * Compiles a validated PolicySpec into an immutable policy: the enforced egress rules in
 * evaluation order (priority, then file order), each with its globs, ports and entry sets compiled,
 * and the rule index (rule-index.ts) that lets a decision cost about the same with 10 rules or 10,000.
 *
 * A rule with a sequence clause (`after`) sits in the same index; its clause is one more
 * condition, checked only for a rule that otherwise matches. Clauses that differ at most in
 * their window share one matcher (the most recent matching call decides every window: it is in
 * a window or nothing is), so a decision scans the history once per distinct matcher at most.
 * A policy with no clause compiles exactly as before: its decisions cost what they did.
 */
import { compileEntrySet } from './entry-set.js';
import type { EntrySet } from './entry-set.js';
import { compileGlob, isMatchAll } from './glob.js';
import type { GlobMatcher } from './glob.js';
import { buildRuleIndex } from './rule-index.js';
import type { IndexedRule, RuleIndex } from './rule-index.js';
import { isEnforcedEgressRule } from './types.js';
import type { AfterSpec, EgressVerdict, PolicySpec, RuleRef, RuleSpec } from './types.js';

export type { EntrySet } from './entry-set.js';

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

export interface CompiledRule extends IndexedRule {
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

function matcherKey(spec: AfterSpec): string {
  const hosts =
    spec.hosts === null
      ? null
      : spec.hosts.map((e) => (e.kind === 'cidr' ? e.cidr.text : e.kind === 'host' ? e.host : `*.${e.suffix}`)).sort();
  return JSON.stringify([spec.toolGlob, spec.serverGlob, hosts]);
}

/** Compiles a clause, sharing its matcher with earlier clauses that differ only in the window. */
function compileAfter(spec: AfterSpec, matchers: Map<string, { -readonly [K in keyof AfterMatcher]: AfterMatcher[K] }>): CompiledAfter {
  const key = matcherKey(spec);
  const withinMs = spec.withinSeconds * 1000;
  let match = matchers.get(key);
  if (!match) {
    match = {
      id: matchers.size,
      tool: compileGlob(spec.toolGlob),
      server: compileGlob(spec.serverGlob),
      hosts: spec.hosts === null ? null : compileEntrySet(spec.hosts),
      scanMs: withinMs,
    };
    matchers.set(key, match);
  }
  match.scanMs = Math.max(match.scanMs, withinMs);
  return { spec, match, withinMs };
}

export function compileRule(
  spec: RuleSpec,
  order: number,
  clauses: Map<string, AfterMatcher & { scanMs: number }> = new Map(),
): CompiledRule {
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
  const enforced = allRules.filter(isEnforcedEgressRule);
  const clauses = new Map<string, AfterMatcher & { scanMs: number }>();
  const rules = enforced.map((spec, order) => compileRule(spec, order, clauses));
  let maxAfterSeconds = 0;
  for (const rule of rules) if (rule.after !== null) maxAfterSeconds = Math.max(maxAfterSeconds, rule.after.spec.withinSeconds);

  return Object.freeze({
    spec,
    defaultVerdict: spec.defaultVerdict,
    shadowMode: spec.shadowMode,
    observeMode: spec.observeMode,
    rules,
    allRules,
    index: buildRuleIndex(rules),
    hasSequenceRules: clauses.size > 0,
    maxAfterSeconds,
    afterClauses: clauses.size,
  });
}
