/** The serving policy as `GET /v1/policy` gives it, and what the console derives from it. */
export interface RuleJson {
  id: string;
  label: string | null;
  priority: number;
  stage: string;
  tool_name_glob: string;
  server_glob: string;
  verdict: string;
  egress: { allow: string[]; deny: string[] } | null;
  ports: number[] | null;
  after: { tool_name_glob: string; server_glob: string; hosts: string[] | null; within_seconds: number } | null;
}

export interface PolicyJson {
  generation: number;
  loaded_at: string;
  sha256: string;
  source: string;
  default_verdict: string;
  shadow_mode: boolean;
  observe_mode: boolean;
  egress_rules: number;
  skipped_rules: number;
  warnings: unknown[];
  rules: RuleJson[];
  last_error: { at: string; errors: string[] } | null;
}

/** Rules in the order the engine walks them: priority, lowest first; ties keep file order. */
export function evaluationOrder(rules: readonly RuleJson[]): RuleJson[] {
  return rules
    .map((rule, index) => ({ rule, index }))
    .sort((a, b) => a.rule.priority - b.rule.priority || a.index - b.index)
    .map((x) => x.rule);
}

/** Why the engine skips a rule on the egress surface (policy.md), or null. */
export function skipped(rule: RuleJson): string | null {
  if (rule.stage !== 'egress') return `stage ${rule.stage}: not evaluated by the proxy`;
  if (rule.verdict === 'pending_approval' || rule.verdict === 'cap_cost') return `${rule.verdict}: not enforced on egress`;
  return null;
}

const q = (s: string): string => JSON.stringify(s);
const list = (items: readonly string[]): string => `[${items.map(q).join(', ')}]`;

/**
 * The serving policy written back as YAML, for a draft to start from (the Test view). JSON
 * strings are valid YAML scalars, so every name is quoted and none can add a key or a line.
 */
export function policyYaml(p: PolicyJson): string {
  const out = [
    'version: 1',
    `default_verdict: ${p.default_verdict}`,
    `shadow_mode: ${p.shadow_mode}`,
    `observe_mode: ${p.observe_mode}`,
    p.rules.length ? 'rules:' : 'rules: []',
  ];
  for (const r of p.rules) {
    out.push(`  - id: ${q(r.id)}`, `    priority: ${r.priority}`);
    if (r.label !== null) out.push(`    label: ${q(r.label)}`);
    if (r.stage !== 'egress') out.push(`    stage: ${r.stage}`);
    if (r.tool_name_glob !== '*') out.push(`    tool_name_glob: ${q(r.tool_name_glob)}`);
    if (r.server_glob !== '*') out.push(`    server_glob: ${q(r.server_glob)}`);
    out.push(`    verdict: ${r.verdict}`);
    if (r.ports) out.push(`    ports: [${r.ports.join(', ')}]`);
    if (r.egress && (r.egress.allow.length || r.egress.deny.length)) {
      out.push('    egress:');
      if (r.egress.allow.length) out.push(`      allow: ${list(r.egress.allow)}`);
      if (r.egress.deny.length) out.push(`      deny: ${list(r.egress.deny)}`);
    }
    if (r.after) {
      out.push('    after:');
      if (r.after.tool_name_glob !== '*') out.push(`      tool_name_glob: ${q(r.after.tool_name_glob)}`);
      if (r.after.server_glob !== '*') out.push(`      server_glob: ${q(r.after.server_glob)}`);
      if (r.after.hosts) out.push(`      hosts: ${list(r.after.hosts)}`);
      out.push(`      within_seconds: ${r.after.within_seconds}`);
    }
  }
  return `${out.join('\n')}\n`;
}
