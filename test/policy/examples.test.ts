/** Every worked example of policy.md, through the same pipeline the proxy uses. */
import t from 'tap';
import { compileYaml, decideFor } from '../helpers/policy.js';
import type { CallSpec } from '../helpers/policy.js';

interface Row {
  name: string;
  policy: string;
  call: CallSpec;
  dispatched: boolean;
  verdict: 'allow' | 'deny' | 'audit';
  reason: string;
  rule: string | null;
  shadow?: boolean;
  addressClass?: string;
  /** Names the resolver must have been asked (default: one query when the destination is a name). */
  queries?: string[];
}

const denyRange = `version: 1
default_verdict: allow
rules:
  - {id: deny-34, priority: 10, verdict: deny, egress: {deny: [34.0.0.0/8]}}`;
const denyLinkLocal = `version: 1
default_verdict: allow
rules:
  - {id: deny-ll, priority: 10, verdict: deny, egress: {deny: [169.254.0.0/16]}}`;
const allowThenDeny = `version: 1
rules:
  - {id: allow-openai, priority: 10, verdict: allow, egress: {allow: [api.openai.com]}}
  - {id: deny-rest, priority: 20, verdict: deny}`;
const denyExceptOpenai = `version: 1
default_verdict: allow
rules:
  - {id: deny-but-openai, priority: 10, verdict: deny, egress: {allow: [api.openai.com]}}`;
const denyRangeExceptPartner = `version: 1
default_verdict: allow
rules:
  - {id: deny-52, priority: 10, verdict: deny, egress: {deny: [52.0.0.0/8], allow: [api.partner.example]}}`;
const auditPastebin = `version: 1
default_verdict: deny
rules:
  - {id: audit-paste, priority: 5, verdict: audit, egress: {deny: ["*.pastebin.com"]}}`;
const pending = `version: 1
default_verdict: allow
rules:
  - {id: hold, priority: 1, verdict: pending_approval}`;
const denyHttpTools = `version: 1
default_verdict: allow
rules:
  - {id: deny-http-tools, priority: 10, verdict: deny, tool_name_glob: "http_*"}`;
const shadowed = `version: 1
default_verdict: allow
shadow_mode: true
rules:
  - {id: deny-34, priority: 10, verdict: deny, egress: {deny: [34.0.0.0/8]}}`;
const defaultAllow = `version: 1
default_verdict: allow`;

const rows: Row[] = [
  {
    name: 'a name is caught by a denied range',
    policy: denyRange,
    call: { destination: 'files.attacker.example:443', resolves: ['34.1.2.3'] },
    dispatched: false,
    verdict: 'deny',
    reason: 'rule',
    rule: 'deny-34',
  },
  {
    name: 'the SSRF baseline runs first',
    policy: denyLinkLocal,
    call: { destination: 'metadata.internal:80', resolves: ['169.254.169.254'] },
    dispatched: false,
    verdict: 'deny',
    reason: 'ssrf_baseline',
    rule: null,
    addressClass: 'metadata',
  },
  {
    name: 'case and trailing dot are canonicalised',
    policy: allowThenDeny,
    call: { destination: 'https://API.OpenAI.com./v1' },
    dispatched: true,
    verdict: 'allow',
    reason: 'rule',
    rule: 'allow-openai',
    queries: ['api.openai.com'],
  },
  {
    name: 'a name on no allow list hits the catch-all, without DNS',
    policy: allowThenDeny,
    call: { destination: 'evil.example:443' },
    dispatched: false,
    verdict: 'deny',
    reason: 'rule',
    rule: 'deny-rest',
    queries: [],
  },
  {
    name: 'an exempt name falls through to the default',
    policy: denyExceptOpenai,
    call: { destination: 'api.openai.com:443' },
    dispatched: true,
    verdict: 'allow',
    reason: 'default',
    rule: null,
  },
  {
    name: 'an empty in-scope list means everything',
    policy: denyExceptOpenai,
    call: { destination: 'other.example:443' },
    dispatched: false,
    verdict: 'deny',
    reason: 'rule',
    rule: 'deny-but-openai',
    queries: [],
  },
  {
    name: 'an exempt name inside a denied range',
    policy: denyRangeExceptPartner,
    call: { destination: 'api.partner.example:443', resolves: ['52.1.2.3'] },
    dispatched: true,
    verdict: 'allow',
    reason: 'default',
    rule: null,
  },
  {
    name: 'another name in the denied range',
    policy: denyRangeExceptPartner,
    call: { destination: 'other.partner.example:443', resolves: ['52.9.9.9'] },
    dispatched: false,
    verdict: 'deny',
    reason: 'rule',
    rule: 'deny-52',
  },
  {
    name: 'audit dispatches',
    policy: auditPastebin,
    call: { destination: 'x.pastebin.com:443' },
    dispatched: true,
    verdict: 'audit',
    reason: 'rule',
    rule: 'audit-paste',
  },
  {
    name: 'pending_approval is skipped on egress',
    policy: pending,
    call: { destination: 'anything.example:443' },
    dispatched: true,
    verdict: 'allow',
    reason: 'default',
    rule: null,
  },
  {
    name: 'a tool glob matches',
    policy: denyHttpTools,
    call: { destination: 'a.example:443', tool: 'http_fetch' },
    dispatched: false,
    verdict: 'deny',
    reason: 'rule',
    rule: 'deny-http-tools',
    queries: [],
  },
  {
    name: 'another tool is not matched',
    policy: denyHttpTools,
    call: { destination: 'a.example:443', tool: 'search' },
    dispatched: true,
    verdict: 'allow',
    reason: 'default',
    rule: null,
  },
  {
    name: 'no tool is not matched by http_*',
    policy: denyHttpTools,
    call: { destination: 'a.example:443', tool: null },
    dispatched: true,
    verdict: 'allow',
    reason: 'default',
    rule: null,
  },
  {
    name: 'shadow mode dispatches a would-be refusal',
    policy: shadowed,
    call: { destination: 'files.attacker.example:443', resolves: ['34.1.2.3'] },
    dispatched: true,
    verdict: 'deny',
    reason: 'rule',
    rule: 'deny-34',
    shadow: true,
  },
  {
    name: 'one internal address refuses the whole call',
    policy: defaultAllow,
    call: { destination: 'mixed.example:443', resolves: ['93.184.216.34', '127.0.0.1'] },
    dispatched: false,
    verdict: 'deny',
    reason: 'ssrf_baseline',
    rule: null,
    addressClass: 'loopback',
  },
];

for (const row of rows) {
  t.test(row.name, async (t) => {
    const { decision, queries } = await decideFor(compileYaml(row.policy), row.call);
    t.equal(decision.dispatched, row.dispatched, 'dispatched');
    t.equal(decision.verdict, row.verdict, 'verdict');
    t.equal(decision.reason, row.reason, 'reason');
    t.equal(decision.rule?.id ?? null, row.rule, 'deciding rule');
    t.equal(decision.shadow, row.shadow ?? false, 'shadow');
    t.equal(decision.address_class, row.addressClass, 'address class');
    const host = row.call.destination
      .replace(/^https?:\/\//, '')
      .replace(/[:/].*$/, '')
      .toLowerCase()
      .replace(/\.$/, '');
    t.same(queries, row.queries ?? [host], 'DNS queries');
    t.equal(decision.trace.length, Math.max(1, decision.addresses.length), 'one trace entry per candidate');
  });
}

t.test('a shadowed refusal of the default verdict', async (t) => {
  const policy = compileYaml('version: 1\nshadow_mode: true\n');
  const { decision, queries } = await decideFor(policy, { destination: 'a.example:443' });
  t.match(decision, { verdict: 'deny', dispatched: true, shadow: true, reason: 'default', rule: null });
  t.same(queries, ['a.example'], 'shadow mode resolves: nothing is blocked by name');
});

t.test('the baseline is not softened by shadow mode', async (t) => {
  const policy = compileYaml('version: 1\nshadow_mode: true\ndefault_verdict: allow\n');
  const { decision } = await decideFor(policy, { destination: '169.254.169.254:80' });
  t.match(decision, { verdict: 'deny', dispatched: false, shadow: false, reason: 'ssrf_baseline', address_class: 'metadata' });
});

t.test('explanations name every rule before the deciding one', async (t) => {
  const policy = compileYaml(`version: 1
rules:
  - {id: other-stage, priority: 1, stage: inbound, verdict: deny}
  - {id: held, priority: 2, verdict: cap_cost}
  - {id: tools, priority: 3, verdict: deny, tool_name_glob: "http_*"}
  - {id: servers, priority: 4, verdict: deny, server_glob: "srv-b"}
  - {id: ports, priority: 5, verdict: deny, ports: [22]}
  - {id: scoped, priority: 6, verdict: deny, egress: {deny: [10.0.0.0/8]}}
  - {id: exempted, priority: 7, verdict: deny, egress: {allow: ["*.example.com"]}}
  - {id: allowed, priority: 8, verdict: allow, egress: {allow: [api.example.com]}}
`);
  const { decision } = await decideFor(policy, { destination: 'api.example.com:443', tool: 'search', server: 'srv-a', baseline: false });
  t.equal(decision.rule?.id, 'allowed');
  const why = decision.trace[0]?.not_matched?.map((n) => `${n.rule}: ${n.why}`) ?? [];
  t.same(why, [
    'other-stage: stage inbound is not evaluated by the egress proxy',
    'held: verdict cap_cost is not enforced on the egress surface',
    "tools: tool_name_glob 'http_*' does not match tool 'search'",
    "servers: server_glob 'srv-b' does not match server 'srv-a'",
    'ports: port 443 is not in ports [22]',
    'scoped: api.example.com (93.184.216.34) is not on the deny list',
    "exempted: exempt: api.example.com (93.184.216.34) matches allow entry '*.example.com'",
  ]);
  const byName = await decideFor(policy, { destination: 'nope.test:443', tool: null, server: null });
  t.equal(byName.decision.rule?.id, 'exempted', 'blocked by name: the empty in-scope list covers nope.test');
  t.same(byName.queries, []);
  t.same(
    byName.decision.trace[0]?.not_matched?.map((n) => n.rule),
    ['other-stage', 'held', 'tools', 'servers', 'ports', 'scoped'],
  );
  t.match(byName.decision.trace[0]?.not_matched?.[2]?.why, /does not match an unattributed call/);
  t.match(
    byName.decision.trace[0]?.not_matched?.[5]?.why,
    /not on the deny list by name; its address entries can only refuse some addresses/,
  );
});
