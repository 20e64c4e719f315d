/**
 * The rule editor (Policy's add and edit, Discovered's proposed rule): a form over one rule with
 * the policy file's keys, producing the JSON body of `POST /v1/rules` / `PUT /v1/rules/{id}`.
 * Defaults (`*` globs, stage egress, empty lists) are left out, so the file gets only what was
 * chosen. The API validates; its errors come back with positions and are shown as they are.
 */
import { field, h } from './dom.js';
import type { RuleJson } from './policy-model.js';

export type RuleBody = Record<string, unknown>;

function splitList(text: string): string[] {
  return text
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean);
}

export interface RuleFormOptions {
  initial: Partial<RuleJson>;
  /** Editing an existing rule: the id cannot change (PUT /v1/rules/{id}). */
  editing: boolean;
  submitLabel: string;
  onSubmit(rule: RuleBody): Promise<void>;
  onCancel(): void;
  /** Shown above the buttons (what the submit will do). */
  note?: HTMLElement | null;
}

export function ruleForm(o: RuleFormOptions): HTMLFormElement {
  const r = o.initial;
  const id = h('input', { name: 'id', required: true, value: r.id ?? '', readonly: o.editing, spellcheck: 'false' });
  const priority = h('input', { name: 'priority', type: 'number', required: true, step: '1', value: r.priority ?? 100 });
  const label = h('input', { name: 'label', value: r.label ?? '', class: 'wide' });
  const verdict = h(
    'select',
    { name: 'verdict' },
    ...['allow', 'deny', 'audit', 'pending_approval', 'cap_cost'].map((v) => h('option', { value: v }, v)),
  );
  verdict.value = r.verdict ?? 'allow';
  const stage = h('select', { name: 'stage' }, ...['egress', 'inbound', 'mcp'].map((v) => h('option', { value: v }, v)));
  stage.value = r.stage ?? 'egress';
  const toolGlob = h('input', { name: 'tool_name_glob', value: r.tool_name_glob ?? '*', spellcheck: 'false' });
  const serverGlob = h('input', { name: 'server_glob', value: r.server_glob ?? '*', spellcheck: 'false' });
  const allow = h('textarea', { name: 'allow', rows: 2, spellcheck: 'false' });
  allow.value = (r.egress?.allow ?? []).join('\n');
  const deny = h('textarea', { name: 'deny', rows: 2, spellcheck: 'false' });
  deny.value = (r.egress?.deny ?? []).join('\n');
  const ports = h('input', { name: 'ports', value: (r.ports ?? []).join(', '), placeholder: 'all', inputmode: 'numeric' });
  const hasAfter = h('input', { type: 'checkbox', name: 'has_after', checked: Boolean(r.after) });
  const afterTool = h('input', { name: 'after_tool_name_glob', value: r.after?.tool_name_glob ?? '*' });
  const afterServer = h('input', { name: 'after_server_glob', value: r.after?.server_glob ?? '*' });
  const afterHosts = h('input', { name: 'after_hosts', value: (r.after?.hosts ?? []).join(', '), placeholder: 'any call' });
  const within = h('input', { name: 'after_within_seconds', type: 'number', min: 1, max: 86400, value: r.after?.within_seconds ?? 600 });
  const afterBox = h(
    'fieldset',
    { class: 'after-box' },
    h('legend', {}, 'Sequence clause (after)'),
    field('Earlier tool glob', afterTool),
    field('Earlier server glob', afterServer),
    field('Earlier hosts', afterHosts, 'comma separated; empty: any call'),
    field('Within seconds', within),
  );
  afterBox.hidden = !hasAfter.checked;
  hasAfter.addEventListener('change', () => (afterBox.hidden = !hasAfter.checked));
  const problem = h('div', { class: 'form-problem', 'aria-live': 'assertive' });
  const submit = h('button', { type: 'submit', class: 'primary' }, o.submitLabel);

  const body = (): RuleBody => {
    const rule: RuleBody = { id: id.value.trim(), priority: Number(priority.value) };
    if (label.value.trim()) rule.label = label.value.trim();
    if (stage.value !== 'egress') rule.stage = stage.value;
    if (toolGlob.value !== '*' && toolGlob.value !== '') rule.tool_name_glob = toolGlob.value;
    if (serverGlob.value !== '*' && serverGlob.value !== '') rule.server_glob = serverGlob.value;
    rule.verdict = verdict.value;
    const a = splitList(allow.value);
    const d = splitList(deny.value);
    if (a.length || d.length) rule.egress = { ...(a.length ? { allow: a } : {}), ...(d.length ? { deny: d } : {}) };
    const p = splitList(ports.value);
    if (p.length) rule.ports = p.map(Number);
    if (hasAfter.checked) {
      const after: Record<string, unknown> = { within_seconds: Number(within.value) };
      if (afterTool.value !== '*' && afterTool.value) after.tool_name_glob = afterTool.value;
      if (afterServer.value !== '*' && afterServer.value) after.server_glob = afterServer.value;
      const hosts = splitList(afterHosts.value);
      if (hosts.length) after.hosts = hosts;
      rule.after = after;
    }
    return rule;
  };

  const form = h(
    'form',
    { class: 'rule-form', 'aria-label': o.editing ? `Edit rule ${r.id ?? ''}` : 'New rule' },
    h(
      'div',
      { class: 'grid' },
      field('Id', id),
      field('Priority', priority, 'lower first'),
      field('Verdict', verdict),
      field('Stage', stage),
    ),
    field('Label', label),
    h(
      'div',
      { class: 'grid' },
      field('Tool glob', toolGlob),
      field('Server glob', serverGlob),
      field('Ports', ports, 'comma separated; empty: all'),
    ),
    h(
      'div',
      { class: 'grid' },
      field('Allow list', allow, 'hosts, *.suffixes, IPs, CIDRs'),
      field('Deny list', deny, 'on allow rules: exemptions'),
    ),
    h('label', { class: 'check' }, hasAfter, ' Only after an earlier call (sequence clause)'),
    afterBox,
    o.note ?? null,
    problem,
    h('div', { class: 'actions' }, submit, h('button', { type: 'button', onclick: () => o.onCancel() }, 'Cancel')),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    submit.disabled = true;
    problem.replaceChildren();
    o.onSubmit(body()).finally(() => (submit.disabled = false));
  });
  return form;
}
