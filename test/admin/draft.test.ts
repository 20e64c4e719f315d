/**
 * The observe-mode draft (`GET /v1/discovered?format=yaml`): client-chosen names never become
 * globs, and no name can add structure to the YAML. Every draft is read back with the real
 * policy loader (what `check` runs) and its rules compared with what was observed.
 */
import t from 'tap';
import { parse } from 'yaml';
import { draftPolicy, printable } from '../../src/admin/draft.js';
import { compilePolicy } from '../../src/policy/compile.js';
import { decide } from '../../src/policy/evaluate.js';
import { parsePolicy } from '../../src/policy/schema.js';
import type { PolicySpec } from '../../src/policy/types.js';
import { DiscoveredStore } from '../../src/state/discovered.js';
import { ip } from '../helpers/policy.js';

function observed(calls: Array<[server: string, tool: string | null, host: string, port: number]>) {
  const store = new DiscoveredStore();
  for (const [server, tool, host, port] of calls) store.record(server, tool, host, port, undefined, new Date(0));
  return store.list();
}

function check(yaml: string): PolicySpec {
  const parsed = parsePolicy('draft.yaml', yaml);
  if (!parsed.spec)
    throw new Error(`the draft fails check: ${parsed.diagnostics.map((d) => `${d.line}:${d.col} ${d.message}`).join('; ')}\n${yaml}`);
  return parsed.spec;
}

t.test('a name with * or ? never becomes a glob; it is listed in a comment instead', async (t) => {
  const yaml = draftPolicy(
    observed([
      ['srv', 'search', 'docs.example', 443],
      ['srv', '*', 'exfil.example', 443],
      ['srv', 'read_*', 'exfil.example', 443],
      ['srv', '?', 'exfil.example', 80],
      ['*', 'search', 'exfil.example', 443],
      ['srv-?', null, 'exfil.example', 443],
      ['srv', null, 'plain.example', 443],
    ]),
    new Date(0),
  );
  const spec = check(yaml);
  t.same(
    spec.rules.map((r) => [r.id, r.serverGlob, r.toolGlob, r.lists?.allow.map((e) => e.text) ?? null]),
    [
      ['discovered-1', 'srv', 'search', ['docs.example']],
      ['discovered-2', 'srv', '*', ['plain.example']],
      ['deny-everything-else', '*', '*', null],
    ],
    "only the literal names became rules (and the unattributed rule, whose * is the proxy's own)",
  );
  for (const rule of spec.rules.slice(0, -1)) t.notMatch(rule.serverGlob, /[*?]/, 'no server glob from a name');
  t.notMatch(spec.rules[0]?.toolGlob ?? '', /[*?]/, 'no tool glob from a name');
  t.match(yaml, /^# Left out: a name with \* or \?/m);
  t.match(yaml, /^# {3}server "srv", tool "\*" \(1 calls\): the tool name contains \* or \?; hosts "exfil\.example"; ports 443$/m);
  t.match(yaml, /^# {3}server "\*", tool "search" \(1 calls\): the server name contains \* or \?/m);
  t.match(yaml, /^# {3}server "srv-\?", unattributed calls \(1 calls\)/m);

  // What the attacker wanted: tool '*' seen once opens exfil.example to every tool of srv.
  const policy = compilePolicy(spec);
  const d = decide(policy, { tool: 'anything', server: 'srv', port: 443, callId: null, now: 0, history: [] }, { name: 'exfil.example' }, [
    ip('93.184.216.34'),
  ]);
  t.equal(d.verdict, 'deny', 'the draft does not allow exfil.example to another tool (a would-deny in its shadow mode)');
  t.equal(d.rule?.id, 'deny-everything-else');
});

t.test('odd names cannot inject YAML structure', async (t) => {
  const odd = [
    'x\ny: 1',
    'x\n  - {id: evil, priority: 0, verdict: allow}',
    'x\r\nrules: []',
    'a\u2028b\u0085c\u2029d',
    '"quoted" \'single\'',
    'back\\slash',
    'true',
    'null',
    '~',
    '- item',
    '#comment',
    ': colon',
    '&anchor',
    '|literal',
    '>folded',
    '!!str tag',
    '---',
    '...',
    '%YAML 1.1',
    '{flow: map}',
    '[flow, seq]',
    '@at',
    '`tick`',
    '',
    ' leading and trailing ',
    '\u0000nul\u0007bell\u001b[31m',
    'é ü 日本 🙂',
    'long-'.repeat(4000),
  ];
  const calls: Array<[string, string | null, string, number]> = [];
  for (const [i, name] of odd.entries()) {
    calls.push([name, `tool-${i}`, 'a.example', 443]);
    calls.push([`srv-${i}`, name, 'b.example', 443]);
  }
  const yaml = draftPolicy(observed(calls), new Date(0));
  const spec = check(yaml);
  const rules = spec.rules.slice(0, -1);
  t.equal(rules.length, odd.length * 2, 'one rule per (server, tool), no more');
  t.same(new Set(rules.map((r) => r.id)), new Set(rules.map((_, i) => `discovered-${i + 1}`)), 'no injected rule ids');
  const pairs = new Set(rules.map((r) => `${r.serverGlob}\u0000${r.toolGlob}`));
  for (const [server, tool] of calls)
    t.ok(pairs.has(`${server}\u0000${tool}`), `the names read back exactly: ${printable(server)} ${printable(tool ?? '')}`);
  t.ok(
    rules.every((r) => r.verdict === 'allow' && r.priority >= 100),
    'no rule jumps the queue',
  );
  const doc = parse(yaml) as Record<string, unknown>;
  t.same(Object.keys(doc), ['version', 'default_verdict', 'shadow_mode', 'observe_mode', 'rules'], 'no injected top-level key');
  t.equal(doc.shadow_mode, true);
  for (const line of yaml.split('\n').filter((l) => l.startsWith('#')))
    t.ok(/^[\x20-\x7e]*$/.test(line), 'comment lines are printable ASCII');
});

t.test('odd names in the left-out comment cannot escape it', async (t) => {
  const yaml = draftPolicy(
    observed([
      ['srv*\nrules:\n  - {id: evil, priority: 0, verdict: allow}', 'x', 'a.example', 443],
      ['srv', '*\u2028evil: true', 'a.example', 443],
      ['srv', '*\r\nshadow_mode: false', 'a.example', 443],
      ['srv', `*${'z'.repeat(10_000)}`, 'a.example', 443],
    ]),
    new Date(0),
  );
  const spec = check(yaml);
  t.same(
    spec.rules.map((r) => r.id),
    ['deny-everything-else'],
    'nothing but the catch-all',
  );
  t.equal(spec.shadowMode, true, 'shadow_mode was not overridden');
  const comments = yaml.split('\n').filter((l) => l.startsWith('#'));
  t.ok(
    comments.every((l) => /^[\x20-\x7e]*$/.test(l)),
    'every comment line is printable ASCII',
  );
  t.ok(
    comments.every((l) => l.length < 400),
    'long names are cut',
  );
  t.equal(
    yaml
      .split('\n')
      .filter((l) => !l.startsWith('#'))
      .join('\n')
      .includes('evil'),
    false,
    'no name outside a comment',
  );
});

t.test('printable', async (t) => {
  t.equal(printable('plain'), '"plain"');
  t.equal(printable('a"b\\c'), '"a\\"b\\\\c"');
  t.equal(printable('a\nb\rc\u2028d\u0085'), '"a\\u000ab\\u000dc\\u2028d\\u0085"');
  t.equal(printable('🙂'), '"\\u{1f642}"');
  t.equal(printable('x'.repeat(100)), `"${'x'.repeat(64)}..."`);
});

t.test('a host that is not a valid list entry is left out, so the draft still passes check', async (t) => {
  const yaml = draftPolicy(
    observed([
      ['srv', 'fetch', 'ok.example', 443],
      ['srv', 'fetch', 'not a host', 443],
      ['srv', 'fetch', '*.wild.example', 443],
      ['srv', 'other', 'a/b', 443],
    ]),
    new Date(0),
  );
  const spec = check(yaml);
  t.same(
    spec.rules.map((r) => [r.toolGlob, r.lists?.allow.map((e) => e.text) ?? null]),
    [
      ['fetch', ['ok.example']],
      ['*', null],
    ],
  );
  t.match(yaml, /^# Left out: 3 host\(s\) that are not valid list entries\.$/m);
});
