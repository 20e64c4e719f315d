/**
 * Sequence clauses (policy.md "Sequence clauses" and its worked examples), through the same
 * pipeline the proxy uses: the by-name step, one resolution, the baseline, the rules. The
 * history is given newest first, as the session-history store hands it over.
 */
import t from 'tap';
import { compileYaml, decideFor, ip, NOW } from '../helpers/policy.js';
import type { CallSpec } from '../helpers/policy.js';
import type { HistoryCall } from '../../src/policy/types.js';
import { createBaseline } from '../../src/net/baseline.js';
import { parseCidr } from '../../src/net/address.js';
import type { Cidr } from '../../src/net/address.js';

/** An earlier call `secondsAgo` before NOW in session S (not an egress call unless host/address given). */
function earlier(tool: string | null, secondsAgo: number, more: Partial<HistoryCall> = {}): HistoryCall {
  return {
    at: NOW - secondsAgo * 1000,
    tool,
    callId: `e-${tool}-${secondsAgo}`,
    server: 'srv',
    sessionId: 'S',
    host: null,
    address: null,
    dispatched: null,
    ...more,
  };
}

/** An earlier egress call to `host` dialled at `address`. */
function fetched(
  secondsAgo: number,
  host: string,
  address: string | null,
  dispatched = true,
  more: Partial<HistoryCall> = {},
): HistoryCall {
  return earlier('fetch', secondsAgo, { host, address: address === null ? null : ip(address), dispatched, ...more });
}

const afterRead = `version: 1
default_verdict: allow
rules:
  - id: no-egress-after-read
    priority: 1
    verdict: deny
    after: {tool_name_glob: "read_*", within_seconds: 600}`;
const afterInternalFetch = `version: 1
default_verdict: allow
rules:
  - id: no-egress-after-internal
    priority: 1
    verdict: deny
    after: {hosts: [10.0.0.0/8], within_seconds: 300}
    egress: {allow: [api.openai.com]}`;

// The worked example's operator exemption: 10.1.2.3 is allow-listed by baseline.allow_cidrs.
const allowCidrs = [parseCidr('10.0.0.0/8') as Cidr];

interface Row {
  name: string;
  policy: string;
  call: CallSpec;
  dispatched: boolean;
  rule: string | null;
  /** The decision's `after`: the earlier call's tool and seconds_ago, or null. */
  after: { tool: string | null; seconds_ago: number; call_id?: string | null; host?: string | null } | null;
  /** Names the resolver must have been asked (default: the destination's name). */
  queries?: string[];
}

const rows: Row[] = [
  {
    name: 'fetch right after a read_file in the session: blocked by the sequence rule',
    policy: afterRead,
    call: { destination: 'evil.example:443', tool: 'fetch', callId: 'c-now', history: [earlier('read_file', 30)] },
    dispatched: false,
    rule: 'no-egress-after-read',
    after: { tool: 'read_file', seconds_ago: 30, call_id: 'e-read_file-30', host: null },
    queries: [],
  },
  {
    name: 'the read_file was 700 s ago: allowed by default',
    policy: afterRead,
    call: { destination: 'evil.example:443', tool: 'fetch', history: [earlier('read_file', 700)] },
    dispatched: true,
    rule: null,
    after: null,
  },
  // Another session's read_file is in another key's history: this call's history does not hold it.
  {
    name: 'the read_file was in another session: allowed by default',
    policy: afterRead,
    call: { destination: 'evil.example:443', tool: 'fetch', history: [] },
    dispatched: true,
    rule: null,
    after: null,
  },
  {
    name: "the read_file call's own egress (same call id): allowed by default",
    policy: afterRead,
    call: { destination: 'evil.example:443', tool: 'read_file', callId: 'r-1', history: [earlier('read_file', 1, { callId: 'r-1' })] },
    dispatched: true,
    rule: null,
    after: null,
  },
  {
    name: 'fetched from 10.1.2.3 (allow-listed) 10 s ago, now evil.example: blocked by the sequence rule',
    policy: afterInternalFetch,
    call: { destination: 'evil.example:443', tool: 'fetch', history: [fetched(10, '10.1.2.3', '10.1.2.3')] },
    dispatched: false,
    rule: 'no-egress-after-internal',
    after: { tool: 'fetch', seconds_ago: 10, host: '10.1.2.3' },
    queries: [],
  },
  {
    name: 'same history, now api.openai.com: exempt, allowed by default',
    policy: afterInternalFetch,
    call: { destination: 'api.openai.com:443', tool: 'fetch', history: [fetched(10, '10.1.2.3', '10.1.2.3')] },
    dispatched: true,
    rule: null,
    after: null,
  },
  {
    name: 'the call to 10.1.2.3 was refused 10 s ago: allowed by default (a refused call read nothing)',
    policy: afterInternalFetch,
    call: { destination: 'evil.example:443', tool: 'fetch', history: [fetched(10, '10.1.2.3', '10.1.2.3', false)] },
    dispatched: true,
    rule: null,
    after: null,
  },
];

for (const row of rows) {
  t.test(row.name, async (t) => {
    const { decision, queries } = await decideFor(compileYaml(row.policy), { baseline: true, ...row.call });
    t.equal(decision.dispatched, row.dispatched, 'dispatched');
    t.equal(decision.rule?.id ?? null, row.rule, 'deciding rule');
    t.equal(decision.reason, row.rule ? 'rule' : 'default', 'reason');
    if (row.after === null) t.equal(decision.after, null, 'after is null');
    else t.match(decision.after, row.after, 'after names the earlier call');
    t.same(queries, row.queries ?? [row.call.destination.replace(/:.*$/, '')], 'DNS queries');
  });
}

t.test('the 10.1.2.3 example also holds with the baseline exemption in place', async (t) => {
  // The earlier call could only be dispatched because of baseline.allow_cidrs; the rule still sees it.
  const policy = compileYaml(afterInternalFetch);
  const { decision } = await decideFor(policy, {
    destination: 'evil.example:443',
    tool: 'fetch',
    history: [fetched(10, '10.1.2.3', '10.1.2.3')],
  });
  t.equal(decision.rule?.id, 'no-egress-after-internal');
  const classify = createBaseline({ allowCidrs });
  t.equal(classify(ip('10.1.2.3'), 443), null, 'the exemption lets 10.1.2.3 through the baseline');
});

t.test('the trace says no earlier call matched within the window', async (t) => {
  const { decision } = await decideFor(compileYaml(afterRead), {
    destination: 'evil.example:443',
    tool: 'fetch',
    history: [earlier('read_file', 700), earlier('search', 5)],
  });
  t.same(decision.trace[0]?.not_matched, [{ rule: 'no-egress-after-read', why: 'no earlier call matching after within 600 s' }]);
  t.equal(decision.after, null);
  const blocked = await decideFor(compileYaml(afterRead), {
    destination: 'evil.example:443',
    tool: 'fetch',
    history: [earlier('read_file', 30)],
  });
  t.match(blocked.decision.trace[0], {
    address: null,
    rule: { id: 'no-egress-after-read' },
    after: { tool: 'read_file', seconds_ago: 30 },
    not_matched: [],
  });
});

t.test('by name (step 7): history decides whether a sequence rule blocks, never DNS', async (t) => {
  const policy = compileYaml(`version: 1
default_verdict: deny
rules:
  - {id: no-egress-after-read, priority: 1, verdict: deny, after: {tool_name_glob: "read_*", within_seconds: 600}}
  - {id: allow-api, priority: 10, verdict: allow, egress: {allow: [api.example.com]}}`);
  // No read: the sequence rule is absent for this call, so the allow rule is reached and the name resolved.
  const quiet = await decideFor(policy, { destination: 'api.example.com:443', tool: 'fetch', history: [earlier('search', 3)] });
  t.match(quiet.decision, { dispatched: true, rule: { id: 'allow-api' }, after: null });
  t.same(quiet.queries, ['api.example.com']);
  t.equal(quiet.decision.trace[0]?.not_matched?.[0]?.why, 'no earlier call matching after within 600 s');
  // After a read: blocked by the sequence rule, by name, with no DNS query at all.
  const read = await decideFor(policy, { destination: 'api.example.com:443', tool: 'fetch', history: [earlier('read_secret', 12)] });
  t.match(read.decision, {
    dispatched: false,
    rule: { id: 'no-egress-after-read' },
    after: { tool: 'read_secret', seconds_ago: 12 },
    addresses: [],
  });
  t.same(read.queries, [], 'no DNS: the history is input, not a reason to resolve');
  // A name on no list is still refused by the default without DNS, with or without history.
  const other = await decideFor(policy, { destination: 'other.example:443', tool: 'fetch', history: [] });
  t.match(other.decision, { dispatched: false, reason: 'default', after: null });
  t.same(other.queries, []);
  t.match(other.decision.trace[0]?.not_matched?.[0], { rule: 'no-egress-after-read', why: 'no earlier call matching after within 600 s' });
});

t.test('by name: a sequence rule that cannot match does not hide a later blocker; one that can dispatch is considered', async (t) => {
  const policy = compileYaml(`version: 1
default_verdict: allow
rules:
  - {id: allow-after-login, priority: 1, verdict: allow, after: {tool_name_glob: login, within_seconds: 60}, egress: {allow: [10.0.0.0/8]}}
  - {id: deny-rest, priority: 5, verdict: deny}`);
  // Without a login the allow rule is absent: blocked by name.
  const none = await decideFor(policy, { destination: 'intranet.example:443', tool: 'fetch', history: [] });
  t.match(none.decision, { dispatched: false, rule: { id: 'deny-rest' } });
  t.same(none.queries, []);
  // After a login it may dispatch some address of the name: the name must be resolved.
  const login = await decideFor(policy, {
    destination: 'intranet.example:443',
    tool: 'fetch',
    resolves: ['10.9.9.9'],
    history: [earlier('login', 20)],
    baseline: false,
  });
  t.match(login.decision, { dispatched: true, rule: { id: 'allow-after-login' }, after: { tool: 'login', seconds_ago: 20 } });
  t.same(login.queries, ['intranet.example']);
});

t.test('the window, the call id, globs and hosts of the earlier call', async (t) => {
  const policy = compileYaml(`version: 1
default_verdict: allow
rules:
  - {id: srv-a-read, priority: 1, verdict: deny, after: {tool_name_glob: "read_?ile", server_glob: "srv-a", within_seconds: 600}}
  - {id: any-tool, priority: 2, verdict: deny, after: {within_seconds: 5}}
  - {id: from-corp, priority: 3, verdict: deny, after: {hosts: ["*.corp.example", 10.0.0.0/8], within_seconds: 3600}}`);
  const decide = async (history: HistoryCall[], callId: string | null = 'now') =>
    (await decideFor(policy, { destination: 'x.example:443', tool: 'fetch', server: 'srv-a', callId, history })).decision;
  t.match(
    await decide([earlier('read_file', 600, { server: 'srv-a' })]),
    { rule: { id: 'srv-a-read' }, after: { seconds_ago: 600 } },
    'exactly at the window: inside',
  );
  t.match(await decide([earlier('read_file', 600.001, { server: 'srv-a' })]), { rule: null }, 'a millisecond past it: outside');
  t.match(await decide([earlier('read_file', 30, { server: 'srv-b' })]), { rule: null }, 'server_glob is matched against the earlier call');
  t.match(
    await decide([earlier('read_pile', 30.25, { server: 'srv-a' })]),
    { rule: { id: 'srv-a-read' }, after: { seconds_ago: 30.25 } },
    'seconds_ago keeps milliseconds',
  );
  t.match(
    await decide([earlier(null, 1)]),
    { rule: { id: 'any-tool' }, after: { tool: null } },
    'a call with no tool is matched by * only',
  );
  t.match(await decide([earlier(null, 30, { server: 'srv-a' })]), { rule: null }, 'no tool: not read_?ile');
  t.match(await decide([earlier('search', 1, { callId: 'now' })]), { rule: null }, 'the call itself is not its earlier call');
  t.match(await decide([earlier('search', 1, { callId: null })]), { rule: { id: 'any-tool' } }, 'an earlier call without id counts');
  t.match(
    await decide([earlier('search', 1, { callId: 'now' })], null),
    { rule: { id: 'any-tool' } },
    'a call without id follows any call',
  );
  t.match(
    await decide([earlier('search', -5)]),
    { rule: { id: 'any-tool' }, after: { seconds_ago: 0 } },
    'a call recorded "after now" (clock stepped back) counts as just now',
  );
  // hosts: a dispatched egress call whose host matches a host entry or whose address matches a CIDR.
  t.match(
    await decide([fetched(100, 'wiki.corp.example', '93.184.216.34')]),
    { rule: { id: 'from-corp' }, after: { host: 'wiki.corp.example' } },
    'by host name (wildcard)',
  );
  t.match(await decide([fetched(100, 'corp.example', '93.184.216.34')]), { rule: null }, 'a wildcard does not match its own base');
  t.match(await decide([fetched(100, 'files.example', '10.4.4.4')]), { rule: { id: 'from-corp' } }, 'by the address dialled');
  t.match(
    await decide([fetched(100, 'files.example', '64:ff9b::a04:404')]),
    { rule: { id: 'from-corp' } },
    'an IPv6 address carrying 10.4.4.4 (NAT64) is in 10.0.0.0/8',
  );
  t.match(await decide([fetched(100, 'wiki.corp.example', null, false)]), { rule: null }, 'refused: read nothing');
  t.match(await decide([earlier('read_wiki', 100, { host: null })]), { rule: null }, 'not an egress call: no host');
  t.match(
    await decide([
      fetched(100, 'files.example', '93.184.216.34'),
      fetched(200, 'a.corp.example', '93.184.216.35'),
      fetched(300, 'b.corp.example', '93.184.216.36'),
    ]),
    { rule: { id: 'from-corp' }, after: { host: 'a.corp.example', seconds_ago: 200 } },
    'the most recent matching call is named',
  );
});

t.test('a sequence rule is otherwise ordinary: polarity, ports, audit, allow, shadow', async (t) => {
  const history = [earlier('read_file', 10)];
  const portPolicy = compileYaml(`version: 1
default_verdict: allow
rules:
  - {id: https-after-read, priority: 1, verdict: deny, ports: [443], after: {tool_name_glob: "read_*", within_seconds: 60}, egress: {deny: ["*.paste.example"]}}`);
  t.match((await decideFor(portPolicy, { destination: 'x.paste.example:443', tool: 'fetch', history })).decision, {
    dispatched: false,
    rule: { id: 'https-after-read' },
  });
  t.match(
    (await decideFor(portPolicy, { destination: 'x.paste.example:80', tool: 'fetch', history })).decision,
    { dispatched: true, rule: null },
    'another port',
  );
  t.match(
    (await decideFor(portPolicy, { destination: 'x.other.example:443', tool: 'fetch', history })).decision,
    { dispatched: true, rule: null },
    'not in scope',
  );
  const audit = compileYaml(`version: 1
default_verdict: allow
rules:
  - {id: audit-after-read, priority: 1, verdict: audit, after: {tool_name_glob: "read_*", within_seconds: 60}}`);
  t.match((await decideFor(audit, { destination: 'x.example:443', tool: 'fetch', history })).decision, {
    dispatched: true,
    verdict: 'audit',
    rule: { id: 'audit-after-read' },
    after: { tool: 'read_file' },
  });
  const shadow = compileYaml(`${afterRead}\nshadow_mode: true\n`);
  const shadowed = await decideFor(shadow, { destination: 'x.example:443', tool: 'fetch', history });
  t.match(shadowed.decision, {
    dispatched: true,
    shadow: true,
    verdict: 'deny',
    rule: { id: 'no-egress-after-read' },
    after: { tool: 'read_file', seconds_ago: 10 },
  });
  t.same(shadowed.queries, ['x.example'], 'shadow mode resolves');
  // Two rules share a matcher (same globs) with different windows: each keeps its own window.
  const windows = compileYaml(`version: 1
default_verdict: allow
rules:
  - {id: short, priority: 1, verdict: deny, after: {tool_name_glob: "read_*", within_seconds: 5}}
  - {id: long, priority: 2, verdict: audit, after: {tool_name_glob: "read_*", within_seconds: 60}}`);
  t.equal(windows.afterClauses, 1, 'one matcher');
  t.match((await decideFor(windows, { destination: 'x.example:443', history: [earlier('read_a', 3)] })).decision, {
    rule: { id: 'short' },
  });
  t.match((await decideFor(windows, { destination: 'x.example:443', history: [earlier('read_a', 30)] })).decision, {
    rule: { id: 'long' },
    after: { seconds_ago: 30 },
  });
  t.match((await decideFor(windows, { destination: 'x.example:443', history: [earlier('read_a', 90)] })).decision, { rule: null });
});

t.test('what the data path needs: hasSequenceRules and maxAfterSeconds count enforced egress rules only', async (t) => {
  const none = compileYaml('version: 1\nrules:\n  - {id: a, priority: 1, verdict: deny}\n');
  t.match(none, { hasSequenceRules: false, maxAfterSeconds: 0 });
  const some = compileYaml(`version: 1
rules:
  - {id: a, priority: 1, verdict: deny, after: {within_seconds: 600}}
  - {id: b, priority: 2, verdict: audit, after: {within_seconds: 900, tool_name_glob: x}}
  - {id: c, priority: 3, verdict: deny, stage: inbound, after: {within_seconds: 86400}}
  - {id: d, priority: 4, verdict: pending_approval, after: {within_seconds: 7200}}`);
  t.match(some, { hasSequenceRules: true, maxAfterSeconds: 900 });
  const skippedOnly = compileYaml('version: 1\nrules:\n  - {id: c, priority: 3, verdict: deny, stage: mcp, after: {within_seconds: 60}}\n');
  t.match(skippedOnly, { hasSequenceRules: false, maxAfterSeconds: 0 });
});

t.test('an IP destination and several candidates: the decision names the earlier call of the deciding candidate', async (t) => {
  const policy = compileYaml(`version: 1
default_verdict: allow
rules:
  - {id: no-52-after-read, priority: 1, verdict: deny, after: {tool_name_glob: "read_*", within_seconds: 60}, egress: {deny: [52.0.0.0/8]}}`);
  const history = [earlier('read_file', 7)];
  const mixed = await decideFor(policy, {
    destination: 'cdn.example:443',
    resolves: ['93.184.216.34', '52.1.2.3'],
    tool: 'fetch',
    history,
  });
  t.match(mixed.decision, { dispatched: false, rule: { id: 'no-52-after-read' }, after: { tool: 'read_file', seconds_ago: 7 } });
  t.notOk('after' in (mixed.decision.trace[0] ?? {}), 'the default-decided candidate has no after');
  t.match(mixed.decision.trace[1], { address: '52.1.2.3', after: { tool: 'read_file' } });
  const literal = await decideFor(policy, { destination: '52.9.9.9:443', tool: 'fetch', history });
  t.match(literal.decision, { dispatched: false, after: { tool: 'read_file' } });
});
