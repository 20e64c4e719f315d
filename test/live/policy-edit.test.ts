/** Edits to the policy text, table-driven: exactly what each edit writes, and nothing else changes. */
import t from 'tap';
import { applyPolicyEdit } from '../../src/live/policy-edit.js';
import type { PolicyEdit } from '../../src/live/policy-edit.js';
import { parsePolicy } from '../../src/policy/schema.js';

const BASE = `# head comment
version: 1
default_verdict: deny # why

rules:
  # first
  - id: a
    priority: 1    # keep me
    verdict: allow
    egress:
      # inner
      allow: [ x.example ]

  # second
  - id: b
    priority: 2
    verdict: deny
# tail comment
`;

const cases: Array<{ name: string; text?: string; edit: PolicyEdit; want: string }> = [
  {
    name: 'replace: unchanged keys keep their comments, changed values keep the line comment',
    edit: {
      kind: 'replace_rule',
      id: 'a',
      rule: { id: 'a', priority: 3, verdict: 'allow', egress: { allow: ['x.example', 'y.example'] } },
    },
    want: BASE.replace('    priority: 1    # keep me\n', '    priority: 3 # keep me\n').replace(
      '      allow: [ x.example ]\n',
      '      allow: [x.example, y.example]\n',
    ),
  },
  {
    name: 'replace: a removed key goes, a new key goes in the documented order, the id stays when the body has none',
    edit: { kind: 'replace_rule', id: 'b', rule: { priority: 2, label: 'B', ports: [443] } },
    want: BASE.replace('  - id: b\n    priority: 2\n    verdict: deny\n', '  - id: b\n    priority: 2\n    label: B\n    ports: [443]\n'),
  },
  {
    name: 'delete: the rule, its comment and its blank line',
    edit: { kind: 'delete_rule', id: 'a' },
    want: BASE.replace(
      '  # first\n  - id: a\n    priority: 1    # keep me\n    verdict: allow\n    egress:\n      # inner\n      allow: [ x.example ]\n\n',
      '',
    ),
  },
  {
    name: 'delete the last rule: the blank line before it goes',
    edit: { kind: 'delete_rule', id: 'b' },
    want: BASE.replace('\n  # second\n  - id: b\n    priority: 2\n    verdict: deny\n', ''),
  },
  {
    name: 'add: after the last rule, blank-line separated like the others, keys in the documented order',
    edit: { kind: 'add_rule', rule: { verdict: 'audit', priority: 9, id: 'c', egress: { deny: ['*.paste.example'] } } },
    want: BASE.replace(
      '    verdict: deny\n# tail',
      '    verdict: deny\n\n  - id: c\n    priority: 9\n    verdict: audit\n    egress:\n      deny: ["*.paste.example"]\n# tail',
    ),
  },
  {
    name: 'settings: a value in place (its comment stays), a new key after the one before it',
    edit: { kind: 'settings', settings: { default_verdict: 'allow', observe_mode: true } },
    want: BASE.replace('default_verdict: deny # why\n', 'default_verdict: allow # why\nobserve_mode: true\n'),
  },
  {
    name: 'default ids: rule-2 is the second rule when it has no id; it stays without one',
    text: 'version: 1\nrules:\n  - priority: 1\n  - priority: 2\n    verdict: deny\n',
    edit: { kind: 'replace_rule', id: 'rule-2', rule: { priority: 2, verdict: 'allow' } },
    want: 'version: 1\nrules:\n  - priority: 1\n  - priority: 2\n    verdict: allow\n',
  },
  {
    name: 'add to a file without rules',
    text: 'version: 1\n',
    edit: { kind: 'add_rule', rule: { id: 'a', priority: 1, verdict: 'deny' } },
    want: 'version: 1\nrules:\n  - id: a\n    priority: 1\n    verdict: deny\n',
  },
  {
    name: 'add to an empty flow list, keeping its comment',
    text: 'version: 1\nrules: [] # none yet\nshadow_mode: false\n',
    edit: { kind: 'add_rule', rule: { id: 'a', priority: 1, verdict: 'deny' } },
    want: 'version: 1\nrules: # none yet\n  - id: a\n    priority: 1\n    verdict: deny\nshadow_mode: false\n',
  },
  {
    name: 'CRLF files stay CRLF, no final newline stays that way',
    text: 'version: 1\r\nrules:\r\n  - id: a\r\n    priority: 1',
    edit: { kind: 'replace_rule', id: 'a', rule: { id: 'a', priority: 2 } },
    want: 'version: 1\r\nrules:\r\n  - id: a\r\n    priority: 2',
  },
  {
    name: 'a flow-style rules list: the whole document is rendered again (comments kept)',
    text: '# c\nversion: 1\nrules: [{id: a, priority: 1}, {id: b, priority: 2}]\n',
    edit: { kind: 'delete_rule', id: 'a' },
    want: '# c\nversion: 1\nrules: [{id: b, priority: 2}]\n',
  },
];

for (const c of cases) {
  t.test(c.name, async (t) => {
    const result = applyPolicyEdit(c.text ?? BASE, c.edit);
    t.ok(result.ok);
    if (!result.ok) return;
    t.equal(result.text, c.want);
  });
}

t.test('every edit of the example policy leaves a valid policy and the other rules byte for byte', async (t) => {
  const { readFile } = await import('node:fs/promises');
  const text = await readFile('config/policy.yaml', 'utf8');
  const spec = parsePolicy('p.yaml', text).spec;
  t.ok(spec);
  for (const rule of spec?.rules ?? []) {
    const replaced = applyPolicyEdit(text, {
      kind: 'replace_rule',
      id: rule.id,
      rule: { id: rule.id, priority: rule.priority + 1, verdict: 'deny' },
    });
    const deleted = applyPolicyEdit(text, { kind: 'delete_rule', id: rule.id });
    for (const [what, r] of [
      ['replace', replaced],
      ['delete', deleted],
    ] as const) {
      t.ok(r.ok && parsePolicy('p.yaml', r.text).spec, `${what} ${rule.id}: valid`);
      if (!r.ok) continue;
      const others = parsePolicy('p.yaml', r.text).spec?.rules.filter((x) => x.id !== rule.id) ?? [];
      t.equal(others.length, (spec?.rules.length ?? 0) - 1);
      // Each other rule's block of text is in the result unchanged.
      for (const other of spec?.rules ?? []) {
        if (other.id === rule.id) continue;
        const block = new RegExp(`  - id: ${other.id}\\n(?: {4}.*\\n)+`).exec(text)?.[0] as string;
        t.ok(r.text.includes(block), `${what} ${rule.id}: ${other.id} byte for byte`);
      }
    }
  }
});

t.test('unknown ids and files an edit cannot work on', async (t) => {
  t.match(applyPolicyEdit(BASE, { kind: 'delete_rule', id: 'zz' }), { ok: false, code: 'not_found' });
  t.match(applyPolicyEdit('version: 1\n', { kind: 'replace_rule', id: 'a', rule: {} }), { ok: false, code: 'not_found' });
  t.match(applyPolicyEdit('version: [1\n', { kind: 'delete_rule', id: 'a' }), { ok: false, code: 'unparsable' });
  t.match(applyPolicyEdit('- a\n', { kind: 'settings', settings: { shadow_mode: true } }), { ok: false, code: 'unparsable' });
});
