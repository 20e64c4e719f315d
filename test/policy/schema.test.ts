/** Validation: every kind of bad file gives the right FILE:LINE:COL; several problems are all listed. */
import t from 'tap';
import { formatDiagnostic } from '../../src/config/yaml.js';
import { loadPolicyFile, parsePolicy } from '../../src/policy/schema.js';

function problems(text: string): string[] {
  return parsePolicy('p.yaml', text).diagnostics.map(formatDiagnostic);
}

const rule = (extra: string) => `version: 1\nrules:\n  - id: r\n    priority: 1\n    verdict: deny\n${extra}`;

const cases: Array<[string, string, RegExp]> = [
  ['bad YAML', 'version: 1\nrules: [\n', /^p\.yaml:3:1: error: /],
  ['duplicate YAML key', 'version: 1\nversion: 1\n', /^p\.yaml:2:1: error: Map keys must be unique/],
  ['empty file', '', /^p\.yaml:1:1: error: empty policy file: version is required/],
  ['not a mapping', '- a\n', /^p\.yaml:1:1: error: policy must be a mapping/],
  ['missing version', 'rules: []\n', /^p\.yaml:1:1: error: version is required/],
  ['wrong version', 'version: 2\n', /^p\.yaml:1:10: error: version must be 1/],
  ['version as a string', 'version: "1"\n', /^p\.yaml:1:10: error: version must be an integer/],
  ['unknown top-level key', 'version: 1\nmode: x\n', /^p\.yaml:2:1: error: policy: unknown key 'mode'/],
  ['bad default verdict', 'version: 1\ndefault_verdict: audit\n', /^p\.yaml:2:18: error: default_verdict must be one of: allow, deny/],
  ['shadow_mode not a boolean', 'version: 1\nshadow_mode: yes\n', /^p\.yaml:2:14: error: shadow_mode must be true or false/],
  ['rules not a list', 'version: 1\nrules: {}\n', /^p\.yaml:2:8: error: rules must be a list/],
  ['rule not a mapping', 'version: 1\nrules:\n  - deny\n', /^p\.yaml:3:5: error: rule 1 must be a mapping/],
  ['unknown rule key', rule('    egres: {}\n'), /^p\.yaml:6:5: error: rule 1: unknown key 'egres'/],
  ['missing priority', 'version: 1\nrules:\n  - verdict: deny\n', /^p\.yaml:3:5: error: rule 1: priority is required/],
  ['missing verdict', 'version: 1\nrules:\n  - priority: 1\n', /^p\.yaml:3:5: error: rule 1: verdict is required/],
  [
    'second rule numbered 2, like its default id rule-2',
    'version: 1\nrules:\n  - {priority: 1, verdict: deny}\n  - {priority: 2}\n',
    /^p\.yaml:4:5: error: rule 2: verdict is required/,
  ],
  [
    'priority not an integer',
    'version: 1\nrules:\n  - {priority: 1.5, verdict: deny}\n',
    /^p\.yaml:3:16: error: priority must be an integer/,
  ],
  [
    'unknown verdict',
    'version: 1\nrules:\n  - {priority: 1, verdict: block}\n',
    /^p\.yaml:3:28: error: verdict must be one of: allow, deny, audit, pending_approval, cap_cost/,
  ],
  ['unknown stage', rule('    stage: egres\n'), /^p\.yaml:6:12: error: stage must be one of: egress, inbound, mcp/],
  ['glob not a string', rule('    tool_name_glob: [a]\n'), /^p\.yaml:6:21: error: tool_name_glob must be a single value, not a list/],
  [
    'duplicate id',
    'version: 1\nrules:\n  - {id: a, priority: 1, verdict: deny}\n  - {id: a, priority: 2, verdict: deny}\n',
    /^p\.yaml:4:10: error: duplicate rule id 'a' \(also rule 1\)/,
  ],
  [
    'explicit id colliding with a default id',
    'version: 1\nrules:\n  - {priority: 1, verdict: deny}\n  - {id: rule-1, priority: 2, verdict: deny}\n',
    /^p\.yaml:4:10: error: duplicate rule id 'rule-1'/,
  ],
  ['id with a space', rule('    label: x\n').replace('id: r', 'id: "a b"'), /^p\.yaml:3:9: error: id must be 1 to 200 visible ASCII/],
  [
    'both egress and egress_json',
    rule('    egress: {deny: [a.com]}\n    egress_json: \'{"deny":["a.com"]}\'\n'),
    /^p\.yaml:7:5: error: a rule has either egress or egress_json, not both/,
  ],
  [
    'both, egress_json first',
    rule('    egress_json: \'{"deny":["a.com"]}\'\n    egress: {deny: [a.com]}\n'),
    /^p\.yaml:7:5: error: a rule has either egress/,
  ],
  ['egress with no entry', rule('    egress: {}\n'), /^p\.yaml:6:13: error: egress declares no entry/],
  ['egress with empty lists', rule('    egress: {allow: [], deny: []}\n'), /^p\.yaml:6:13: error: egress declares no entry/],
  ['egress null', rule('    egress:\n'), /^p\.yaml:6:5: error: egress must be a mapping/],
  ['egress unknown list', rule('    egress: {block: [a.com]}\n'), /^p\.yaml:6:14: error: egress: unknown key 'block'/],
  ['egress list not a list', rule('    egress: {deny: a.com}\n'), /^p\.yaml:6:20: error: egress.deny must be a list/],
  ['egress entry not a string', rule('    egress: {deny: [1]}\n'), /^p\.yaml:6:21: error: egress.deny: each item must be a string/],
  [
    'a URL is not an entry',
    rule('    egress:\n      deny:\n        - ok.example\n        - https://evil.example/x\n'),
    /^p\.yaml:9:11: error: 'https:\/\/evil.example\/x' is not a wildcard host|^p\.yaml:9:11: error: .*https:\/\/evil.example/,
  ],
  [
    'a port is not an entry',
    rule('    egress: {deny: ["a.com:443"]}\n'),
    /^p\.yaml:6:21: error: 'a.com:443' is neither a host name, an IP literal nor a CIDR/,
  ],
  ['a space is not an entry', rule('    egress: {deny: ["a com"]}\n'), /^p\.yaml:6:21: error: 'a com' is neither/],
  [
    '*.com is rejected',
    rule('    egress: {deny: ["*.com"]}\n'),
    /^p\.yaml:6:21: error: '\*\.com': the part after '\*\.' needs at least two labels/,
  ],
  [
    '* in the middle is rejected',
    rule('    egress: {deny: ["api.*.com"]}\n'),
    /^p\.yaml:6:21: error: 'api\.\*\.com': '\*' is allowed only as a leading/,
  ],
  ['a bare * is rejected', rule('    egress: {deny: ["*"]}\n'), /^p\.yaml:6:21: error: '\*': '\*' is allowed only/],
  [
    'a wildcard over an address',
    rule('    egress: {deny: ["*.1.2.3"]}\n'),
    /^p\.yaml:6:21: error: '\*\.1\.2\.3': a wildcard must be followed by a host name/,
  ],
  [
    'host bits beyond the prefix',
    rule('    egress: {deny: [10.0.0.1/8]}\n'),
    /^p\.yaml:6:21: error: '10.0.0.1\/8' has bits set beyond its \/8 prefix/,
  ],
  [
    'IPv6 bits beyond the prefix',
    rule('    egress: {deny: ["2001:db8::1/32"]}\n'),
    /^p\.yaml:6:21: error: '2001:db8::1\/32' has bits set beyond/,
  ],
  ['prefix too long', rule('    egress: {deny: [10.0.0.0/33]}\n'), /^p\.yaml:6:21: error: prefix length above 32/],
  ['IPv6 prefix too long', rule('    egress: {deny: ["::/129"]}\n'), /^p\.yaml:6:21: error: prefix length above 128/],
  ['non-decimal prefix', rule('    egress: {deny: [10.0.0.0/0x8]}\n'), /^p\.yaml:6:21: error: invalid prefix length/],
  ['CIDR with a short address', rule('    egress: {deny: [10/8]}\n'), /^p\.yaml:6:21: error: invalid IPv4 address in '10\/8'/],
  ['CIDR with a zone', rule('    egress: {deny: ["fe80::%eth0/64"]}\n'), /^p\.yaml:6:21: error: invalid IPv6 address/],
  ['label too long', rule(`    egress: {deny: [${'a'.repeat(64)}.com]}\n`), /^p\.yaml:6:21: error: .* is neither/],
  ['name ending in a number', rule('    egress: {deny: [foo.123]}\n'), /^p\.yaml:6:21: error: 'foo.123' is neither/],
  ['egress_json not JSON', rule("    egress_json: '{deny'\n"), /^p\.yaml:6:18: error: egress_json is not valid JSON/],
  ['egress_json not an object', rule('    egress_json: \'["a.com"]\'\n'), /^p\.yaml:6:18: error: egress_json must be a JSON object/],
  ['egress_json unknown key', rule('    egress_json: \'{"block":["a.com"]}\'\n'), /^p\.yaml:6:18: error: egress_json: unknown key 'block'/],
  [
    'egress_json list of non-strings',
    rule('    egress_json: \'{"deny":[1]}\'\n'),
    /^p\.yaml:6:18: error: egress_json: deny must be an array of strings/,
  ],
  ['egress_json empty object', rule("    egress_json: '{}'\n"), /^p\.yaml:6:18: error: egress_json declares no entry/],
  ['egress_json empty lists', rule('    egress_json: \'{"allow":[]}\'\n'), /^p\.yaml:6:18: error: egress_json declares no entry/],
  [
    'egress_json bad entry',
    rule('    egress_json: \'{"deny":["10.0.0.1/8"]}\'\n'),
    /^p\.yaml:6:18: error: egress_json.deny: '10.0.0.1\/8' has bits set/,
  ],
  [
    'egress_json not a string',
    rule('    egress_json: {deny: [a.com]}\n'),
    /^p\.yaml:6:18: error: egress_json must be a single value, not a mapping/,
  ],
  ['ports empty', rule('    ports: []\n'), /^p\.yaml:6:12: error: ports must list at least one port/],
  ['port out of range', rule('    ports: [443, 70000]\n'), /^p\.yaml:6:18: error: ports: each port must be an integer from 1 to 65535/],
  ['port range string', rule('    ports: ["80-90"]\n'), /^p\.yaml:6:13: error: ports: each port must be an integer/],
  ['ports not a list', rule('    ports: 443\n'), /^p\.yaml:6:12: error: ports must be a list/],
  [
    'rule keys not strings',
    'version: 1\nrules:\n  - {1: x, priority: 1, verdict: deny}\n',
    /^p\.yaml:3:6: error: rule 1: keys must be strings/,
  ],
  // Sequence clauses (policy.md "Sequence clauses"): the same strictness, with positions.
  ['after not a mapping', rule('    after: 600\n'), /^p\.yaml:6:12: error: after must be a mapping/],
  ['after empty', rule('    after:\n'), /^p\.yaml:6:5: error: after must be a mapping/],
  ['after a list', rule('    after: [read_file]\n'), /^p\.yaml:6:12: error: after must be a mapping/],
  [
    'after unknown key',
    rule('    after: {within_seconds: 60, tool: read_file}\n'),
    /^p\.yaml:6:33: error: after: unknown key 'tool' \(expected one of: tool_name_glob, server_glob, hosts, within_seconds\)/,
  ],
  [
    'after without within_seconds',
    rule('    after: {tool_name_glob: "read_*"}\n'),
    /^p\.yaml:6:12: error: after\.within_seconds is required \(an integer from 1 to 86400\)/,
  ],
  [
    'after without within_seconds, block style',
    rule('    after:\n      tool_name_glob: "read_*"\n'),
    /^p\.yaml:7:7: error: after\.within_seconds is required/,
  ],
  [
    'within_seconds 0',
    rule('    after: {within_seconds: 0}\n'),
    /^p\.yaml:6:29: error: after\.within_seconds must be an integer from 1 to 86400/,
  ],
  [
    'within_seconds above a day',
    rule('    after:\n      within_seconds: 86401\n'),
    /^p\.yaml:7:23: error: after\.within_seconds must be an integer from 1 to 86400/,
  ],
  [
    'within_seconds negative',
    rule('    after: {within_seconds: -5}\n'),
    /^p\.yaml:6:29: error: after\.within_seconds must be an integer from 1 to 86400/,
  ],
  [
    'within_seconds not an integer',
    rule('    after: {within_seconds: 1.5}\n'),
    /^p\.yaml:6:29: error: after\.within_seconds must be an integer/,
  ],
  [
    'within_seconds a string',
    rule('    after: {within_seconds: "600"}\n'),
    /^p\.yaml:6:29: error: after\.within_seconds must be an integer/,
  ],
  ['within_seconds empty', rule('    after: {within_seconds: }\n'), /^p\.yaml:6:13: error: after\.within_seconds must be an integer/],
  [
    'after tool glob a list',
    rule('    after: {tool_name_glob: [a], within_seconds: 5}\n'),
    /^p\.yaml:6:29: error: after\.tool_name_glob must be a single value, not a list/,
  ],
  [
    'after tool glob a number',
    rule('    after: {tool_name_glob: 5, within_seconds: 5}\n'),
    /^p\.yaml:6:29: error: after\.tool_name_glob must be a string/,
  ],
  [
    'after server glob a boolean',
    rule('    after: {server_glob: true, within_seconds: 5}\n'),
    /^p\.yaml:6:26: error: after\.server_glob must be a string/,
  ],
  [
    'after hosts empty',
    rule('    after: {hosts: [], within_seconds: 5}\n'),
    /^p\.yaml:6:20: error: after\.hosts must list at least one entry/,
  ],
  [
    'after hosts not a list',
    rule('    after: {hosts: 10.0.0.0/8, within_seconds: 5}\n'),
    /^p\.yaml:6:20: error: after\.hosts must be a list/,
  ],
  [
    'after hosts item not a string',
    rule('    after:\n      within_seconds: 5\n      hosts: [ok.example, 7]\n'),
    /^p\.yaml:8:27: error: after\.hosts: each item must be a string/,
  ],
  [
    'after hosts a URL',
    rule('    after:\n      within_seconds: 5\n      hosts:\n        - "https://x.example/"\n'),
    /^p\.yaml:9:11: error: after\.hosts: .*https:\/\/x\.example\//,
  ],
  [
    'after hosts *.com',
    rule('    after: {hosts: ["*.com"], within_seconds: 5}\n'),
    /^p\.yaml:6:21: error: after\.hosts: '\*\.com': the part after '\*\.' needs at least two labels/,
  ],
  [
    'after hosts bits beyond the prefix',
    rule('    after: {hosts: [10.0.0.1/8], within_seconds: 5}\n'),
    /^p\.yaml:6:21: error: after\.hosts: '10\.0\.0\.1\/8' has bits set beyond/,
  ],
];

for (const [name, text, expected] of cases) {
  t.test(name, async (t) => {
    const result = parsePolicy('p.yaml', text);
    t.equal(result.spec, null, 'rejected');
    const lines = result.diagnostics.map(formatDiagnostic);
    t.ok(
      lines.some((l) => expected.test(l)),
      `${lines.join(' | ')} ~ ${expected}`,
    );
  });
}

t.test('every problem of a file is listed, in file order', async (t) => {
  const text = `version: 3
default_verdict: maybe
rules:
  - id: a
    priority: high
    verdict: deny
    egress: {deny: [10.0.0.1/8, ok.example, "bad host"]}
  - id: a
    priority: 2
    verdict: allow
    ports: [0]
`;
  const lines = problems(text);
  t.same(
    lines.map((l) => l.split(': error: ')[0]),
    ['p.yaml:1:10', 'p.yaml:2:18', 'p.yaml:5:15', 'p.yaml:7:21', 'p.yaml:7:45', 'p.yaml:8:9', 'p.yaml:11:13'],
    lines.join('\n'),
  );
});

t.test('warnings: skipped verdicts are named by id', async (t) => {
  const result = parsePolicy(
    'p.yaml',
    `version: 1
rules:
  - {id: hold, priority: 1, verdict: pending_approval}
  - {id: spend, priority: 2, verdict: cap_cost, stage: mcp}
  - {id: real, priority: 3, verdict: deny, stage: egress}
`,
  );
  t.ok(result.spec, 'valid');
  t.same(result.diagnostics.map(formatDiagnostic), [
    "p.yaml:3:38: warning: rule 'hold': pending_approval is not enforced on the egress surface; the rule is skipped",
  ]);
  t.equal(result.egressRules, 1);
  t.equal(result.skippedRules, 2);
});

t.test('warnings: an IPv6 spelling of IPv4 addresses in a list says to write the IPv4 block', async (t) => {
  const result = parsePolicy(
    'p.yaml',
    `version: 1
rules:
  - {id: a, priority: 1, verdict: deny, egress: {deny: ["64:ff9b::5db8:d800/120", "2002:5db8:d822::/48", "::5db8:d822", "2002::/16"]}}
  - {id: b, priority: 2, verdict: deny, egress_json: '{"allow": ["64:ff9b::/96"]}'}
  - {id: quiet, priority: 3, verdict: deny, egress: {deny: ["::/0", "2000::/3", "::1", "::", "::ffff:10.0.0.0/104", "64:ff9b::/95", "2606:4700::/32", 93.184.216.0/24]}}
`,
  );
  t.ok(result.spec, 'valid: a warning, not an error');
  t.same(result.diagnostics.map(formatDiagnostic), [
    "p.yaml:3:57: warning: entry '64:ff9b::5db8:d800/120' is the NAT64 spelling of 93.184.216.0/24 and matches only addresses written that way; write 93.184.216.0/24 to match it in every spelling (IPv4, NAT64, 6to4, IPv4-compatible)",
    "p.yaml:3:83: warning: entry '2002:5db8:d822::/48' is the 6to4 spelling of 93.184.216.34/32 and matches only addresses written that way; write 93.184.216.34/32 to match it in every spelling (IPv4, NAT64, 6to4, IPv4-compatible)",
    "p.yaml:3:106: warning: entry '::5db8:d822' is the IPv4-compatible spelling of 93.184.216.34/32 and matches only addresses written that way; write 93.184.216.34/32 to match it in every spelling (IPv4, NAT64, 6to4, IPv4-compatible)",
    "p.yaml:3:121: warning: entry '2002::/16' is the 6to4 spelling of 0.0.0.0/0 and matches only addresses written that way; write 0.0.0.0/0 to match it in every spelling (IPv4, NAT64, 6to4, IPv4-compatible)",
    "p.yaml:4:54: warning: egress_json.allow: entry '64:ff9b::/96' is the NAT64 spelling of 0.0.0.0/0 and matches only addresses written that way; write 0.0.0.0/0 to match it in every spelling (IPv4, NAT64, 6to4, IPv4-compatible)",
  ]);
});

t.test('defaults and accepted forms', async (t) => {
  const result = parsePolicy(
    'p.yaml',
    `version: 1
rules:
  - priority: -5
    verdict: allow
    egress_json: ""
  - id: lists
    priority: 0
    label: Lists
    verdict: deny
    egress:
      deny: ["[2001:db8::1]", "2852039166", "::ffff:10.0.0.0/104", Bücher.Example., "*.Sub.Example.com"]
`,
  );
  t.ok(result.spec, result.diagnostics.map(formatDiagnostic).join('\n'));
  const [first, second] = result.spec?.rules ?? [];
  t.match(first, { id: 'rule-1', label: null, stage: 'egress', toolGlob: '*', serverGlob: '*', lists: null, ports: null, priority: -5 });
  t.same(
    second?.lists?.deny.map((e) => (e.kind === 'cidr' ? e.cidr.text : e.kind === 'host' ? e.host : `*.${e.suffix}`)),
    ['2001:db8::1/128', '169.254.169.254/32', '10.0.0.0/8', 'xn--bcher-kva.example', '*.sub.example.com'],
  );
  t.match(result.spec, { defaultVerdict: 'deny', shadowMode: false, observeMode: false });
  t.same(parsePolicy('p.yaml', 'version: 1\nrules:\n').spec?.rules, [], 'rules: with no value is no rules');
});

t.test('sequence clauses: accepted forms and defaults', async (t) => {
  const result = parsePolicy(
    'p.yaml',
    `version: 1
rules:
  - id: full
    priority: 1
    verdict: deny
    after:
      tool_name_glob: "read_*"
      server_glob: "srv-?"
      hosts: [10.0.0.0/8, "*.Corp.Example", files.example., "64:ff9b::a00:0/104"]
      within_seconds: 86400
  - id: short
    priority: 2
    verdict: audit
    after: {within_seconds: 1}
  - {id: plain, priority: 3, verdict: allow}
`,
  );
  t.ok(result.spec, result.diagnostics.map(formatDiagnostic).join('\n'));
  const [full, short, plain] = result.spec?.rules ?? [];
  t.match(full?.after, { toolGlob: 'read_*', serverGlob: 'srv-?', withinSeconds: 86400 });
  t.same(
    full?.after?.hosts?.map((e) => (e.kind === 'cidr' ? e.cidr.text : e.kind === 'host' ? e.host : `*.${e.suffix}`)),
    ['10.0.0.0/8', '*.corp.example', 'files.example', '64:ff9b::a00:0/104'],
  );
  t.same(short?.after, { toolGlob: '*', serverGlob: '*', hosts: null, withinSeconds: 1 }, 'omitted globs are *, omitted hosts: any call');
  t.equal(plain?.after, null, 'a rule without after');
  t.same(result.diagnostics.map(formatDiagnostic), [
    "p.yaml:9:61: warning: after.hosts: entry '64:ff9b::a00:0/104' is the NAT64 spelling of 10.0.0.0/8 and matches only addresses written that way; write 10.0.0.0/8 to match it in every spelling (IPv4, NAT64, 6to4, IPv4-compatible)",
  ]);
});

t.test('sequence clauses: every problem of a clause is listed', async (t) => {
  const lines = problems(
    rule('    after:\n      tool_name_glob: [x]\n      hosts: ["a b", ok.example, "*.com"]\n      within_seconds: 0\n      extra: 1\n'),
  );
  t.same(
    lines.map((l) => l.split(': error: ')[0]),
    ['p.yaml:7:23', 'p.yaml:8:15', 'p.yaml:8:34', 'p.yaml:9:23', 'p.yaml:10:7'],
    lines.join('\n'),
  );
});

t.test('an unreadable file is one error at 1:1', async (t) => {
  const result = await loadPolicyFile('/nonexistent/policy.yaml');
  t.equal(result.spec, null);
  t.same(result.diagnostics.map(formatDiagnostic), ['/nonexistent/policy.yaml:1:1: error: cannot read policy file: ENOENT']);
});
