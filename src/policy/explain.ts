/**
 * Explain mode: for a decision, why each rule before the deciding one did not match (the trace's
 * `not_matched`). Only `check`/`test`, the dry run and `POST /v1/test` ask for it; never the
 * proxy's hot path. It walks every rule of the file, skipped ones included, so it says why those
 * were skipped too.
 */
import { cidrContains } from '../net/address.js';
import type { IpAddress, Ipv4Address } from '../net/address.js';
import type { CompiledPolicy, CompiledRule } from './compile.js';
import { addressOnSet, nameOnSet } from './entry-set.js';
import { earlierFor } from './sequence.js';
import type { CallContext, Entry, NotMatched, RuleSpec } from './types.js';

/** Why each rule before the one that decided `(name, ip)` (null: the default decided) did not match. */
export function explainAddress(
  policy: CompiledPolicy,
  ctx: CallContext,
  name: string | null,
  ip: IpAddress,
  carried: Ipv4Address | null,
  decidedBy: CompiledRule | null,
): NotMatched[] {
  const dest = name ?? ip.text;
  const address = carried ? `${ip.text}, carrying ${carried.text}` : ip.text;
  return walkBefore(policy, decidedBy, (rule) => {
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

/** Why each rule before the one that refuses `name` whatever it resolves to (null: the default) did not. */
export function explainName(policy: CompiledPolicy, ctx: CallContext, name: string, decidedBy: CompiledRule | null): NotMatched[] {
  return walkBefore(policy, decidedBy, (rule) => {
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

/** Whether one entry holds `(name, ip)`; `carried` as in addressOnSet. */
export function entryMatches(entry: Entry, name: string | null, ip: IpAddress | null, carried: Ipv4Address | null = null): boolean {
  if (entry.kind === 'host') return name !== null && name === entry.host;
  if (entry.kind === 'wildcard') return name !== null && name.endsWith(`.${entry.suffix}`);
  return ip !== null && (cidrContains(entry.cidr, ip) || (carried !== null && cidrContains(entry.cidr, carried)));
}

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

function skippedReason(spec: RuleSpec): string {
  if (spec.stage !== 'egress') return `stage ${spec.stage} is not evaluated by the egress proxy`;
  return `verdict ${spec.verdict} is not enforced on the egress surface`;
}

/** Why each rule of the file before `upTo` (null: all of them) did not match. */
function walkBefore(policy: CompiledPolicy, upTo: CompiledRule | null, why: (rule: CompiledRule) => string): NotMatched[] {
  const compiled = new Map(policy.rules.map((r) => [r.spec, r] as const));
  const out: NotMatched[] = [];
  for (const spec of policy.allRules) {
    const rule = compiled.get(spec);
    if (upTo && rule === upTo) break;
    out.push({ rule: spec.id, why: rule ? why(rule) : skippedReason(spec) });
  }
  return out;
}
