/**
 * The policy's data: what a validated file says (PolicySpec) and what a decision says
 * (Decision). The decision is one value that travels from evaluation to the answer, the event
 * and the metrics; nothing downstream re-derives it.
 */
import type { Cidr, IpAddress } from '../net/address.js';
import type { AddressClass } from '../net/baseline.js';

export const RULE_VERDICTS = ['allow', 'deny', 'audit', 'pending_approval', 'cap_cost'] as const;
export type RuleVerdict = (typeof RULE_VERDICTS)[number];
/** The verdicts the egress surface enforces; the others are skipped (policy.md). */
export type EgressVerdict = 'allow' | 'deny' | 'audit';
export const STAGES = ['egress', 'inbound', 'mcp'] as const;
export type Stage = (typeof STAGES)[number];

/** Whether the verdict is one the egress surface enforces (policy.md "Which rules the proxy evaluates"). */
export function isEnforcedVerdict(verdict: RuleVerdict): verdict is EgressVerdict {
  return verdict === 'allow' || verdict === 'deny' || verdict === 'audit';
}

/** Whether the proxy evaluates the rule: an egress rule with an enforced verdict; every other rule is skipped. */
export function isEnforcedEgressRule(rule: { readonly stage: Stage; readonly verdict: RuleVerdict }): boolean {
  return rule.stage === 'egress' && isEnforcedVerdict(rule.verdict);
}

export type Entry =
  | { readonly kind: 'host'; readonly text: string; readonly host: string }
  | { readonly kind: 'wildcard'; readonly text: string; readonly suffix: string }
  | { readonly kind: 'cidr'; readonly text: string; readonly cidr: Cidr };

export interface EgressLists {
  readonly allow: readonly Entry[];
  readonly deny: readonly Entry[];
}

/**
 * A sequence clause (policy.md "Sequence clauses"): the rule applies only to a call whose
 * history holds an earlier call matching it, at most `withinSeconds` before.
 */
export interface AfterSpec {
  readonly toolGlob: string;
  readonly serverGlob: string;
  /** null: any earlier call; else it must be a dispatched egress call to one of these. */
  readonly hosts: readonly Entry[] | null;
  readonly withinSeconds: number;
}

export interface RuleSpec {
  /** 1-based position in the file, among all rules. */
  readonly position: number;
  readonly id: string;
  readonly label: string | null;
  readonly priority: number;
  readonly stage: Stage;
  readonly toolGlob: string;
  readonly serverGlob: string;
  readonly verdict: RuleVerdict;
  /** null: the rule has no list at all and is in scope for every destination. */
  readonly lists: EgressLists | null;
  readonly ports: readonly number[] | null;
  /** The sequence clause, or null for an ordinary rule. */
  readonly after: AfterSpec | null;
}

export interface PolicySpec {
  readonly defaultVerdict: 'allow' | 'deny';
  readonly shadowMode: boolean;
  readonly observeMode: boolean;
  readonly rules: readonly RuleSpec[];
}

export interface RuleRef {
  readonly id: string;
  readonly label: string | null;
  readonly priority: number;
}

/** Why a decision refused or allowed: `rule`/`default` when the policy decided. */
export type DecisionReason = 'rule' | 'default' | 'ssrf_baseline' | 'unattributed';

export interface NotMatched {
  readonly rule: string;
  readonly why: string;
}

export interface TraceEntry {
  /** The candidate address; null for a decision made on the name alone, before any DNS. */
  readonly address: string | null;
  readonly verdict: EgressVerdict;
  readonly decided_by: 'rule' | 'default' | 'ssrf_baseline';
  readonly rule: RuleRef | null;
  readonly dispatched: boolean;
  readonly shadow: boolean;
  readonly address_class?: AddressClass;
  /** Only when the deciding rule has a sequence clause: the earlier call that satisfied it. */
  readonly after?: AfterMatch;
  /** Explain mode only: the rules walked before the deciding one and why each did not match. */
  readonly not_matched?: readonly NotMatched[];
}

/** The decision object of interface.md (`test`, `POST /v1/test`, events). */
export interface Decision {
  readonly verdict: EgressVerdict;
  readonly dispatched: boolean;
  readonly shadow: boolean;
  readonly reason: DecisionReason;
  readonly rule: RuleRef | null;
  readonly addresses: readonly string[];
  readonly trace: readonly TraceEntry[];
  /** The earlier call that satisfied the deciding rule's sequence clause; null unless such a rule decided. */
  readonly after: AfterMatch | null;
  /** Set on baseline refusals. */
  readonly address_class?: AddressClass;
  /** Observe mode: no rule covered the call (the default verdict decided). */
  readonly uncovered: boolean;
}

/** Who is calling and where to: the part of a call the rules look at. */
export interface CallContext {
  /** The tool name, or null for an unattributed connection (only `*` globs match it). */
  readonly tool: string | null;
  /** The client identity ("server"). */
  readonly server: string | null;
  readonly port: number;
  /** The call's own id: a call is never its own earlier call. */
  readonly callId: string | null;
  /** When the call is decided (ms since the epoch): sequence windows end here. */
  readonly now: number;
  /** The call's key's history (its session, else its client identity), NEWEST FIRST; empty when none. */
  readonly history: readonly HistoryCall[];
}

/** One recorded call of a session's history (interface.md "Session history"). */
export interface HistoryCall {
  /** ms since the epoch, when it was recorded. */
  readonly at: number;
  /** null: no tool (only a `*` glob matches). */
  readonly tool: string | null;
  readonly callId: string | null;
  /** The client identity. */
  readonly server: string | null;
  readonly sessionId: string | null;
  /** An egress call's canonical host; null when not an egress call. */
  readonly host: string | null;
  /** The address dialled (null when refused or not an egress call). */
  readonly address: IpAddress | null;
  /** Egress calls: whether dispatched; null when not an egress call. */
  readonly dispatched: boolean | null;
}

/** The decision's `after` field: the earlier call that satisfied the deciding rule's clause (the most recent one). */
export interface AfterMatch {
  readonly call_id: string | null;
  readonly tool: string | null;
  readonly server: string | null;
  readonly session_id: string | null;
  readonly host: string | null;
  /** (now - at) / 1000 with millisecond precision (three decimals at most); never negative. */
  readonly seconds_ago: number;
}
