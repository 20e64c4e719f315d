/**
 * Differential test: the indexed evaluator against the reference evaluator (a plain loop written
 * from policy.md) on generated policies and calls. They must agree on the verdict, the deciding
 * rule, and the rule of every candidate; the name-only refusal (step 7) must agree with the
 * reference's rule-by-rule reasoning, and must be sound: a name refused without DNS is refused
 * whatever it resolves to. Sequence clauses: rules get `after` clauses and calls get histories
 * (ages around the windows' edges, own and foreign call ids, refused and dispatched egress, calls
 * "from the future"); both must name the same earlier call.
 */
import fc from 'fast-check';
import t from 'tap';
import type { IpAddress } from '../../src/net/address.js';
import { createBaseline } from '../../src/net/baseline.js';
import { compilePolicy } from '../../src/policy/compile.js';
import { parseEntry } from '../../src/policy/entries.js';
import { decide, decideByName } from '../../src/policy/evaluate.js';
import type { AfterSpec, CallContext, Entry, HistoryCall, PolicySpec, RuleSpec, RuleVerdict, Stage } from '../../src/policy/types.js';
import { callContext, ip, NOW } from '../helpers/policy.js';
import { refBlockedByName, refDecide, refEarlier, sortedEgressRules } from '../helpers/reference.js';

const NAMES = ['a.example.com', 'b.example.com', 'x.a.example.com', 'y.x.a.example.com', 'api.test', 'evil.test', 'example.com'];
const WILDCARDS = ['*.example.com', '*.a.example.com', '*.x.a.example.com', '*.api.test'];
// IPv6 forms that carry an IPv4 address (policy.md): NAT64, IPv4-compatible and 6to4 spellings of
// the IPv4 addresses above, and `::1`, which carries none.
const CARRYING = ['64:ff9b::2201:203', '64:ff9b::5db8:d822', '::2201:909', '::3401:203', '2002:2201:203::1', '2002:5db8:d822:1::9', '::1'];
const ADDRESSES = [
  '34.1.2.3',
  '34.1.9.9',
  '34.200.0.1',
  '52.1.2.3',
  '93.184.216.34',
  '10.0.0.5',
  '2600:1::5',
  '2600:1:2::9',
  '2a00::1',
  '2600::1',
  ...CARRYING,
];
const CIDRS = [
  '34.0.0.0/8',
  '34.1.0.0/16',
  '34.1.2.3/32',
  '52.0.0.0/8',
  '0.0.0.0/0',
  '93.184.216.0/24',
  '10.0.0.0/8',
  '34.1.2.0/23',
  '2600::/16',
  '2600:1::/32',
  '2600:1::5/128',
  '::/0',
  '2600::/12',
  '::ffff:34.0.0.0/104',
  '2600:1:2::/47',
  '64:ff9b::/96',
  '2002::/16',
  '64:ff9b::2201:0/112',
  '::/96',
  '0.0.0.0/8',
  '2002:5db8:d822::/48',
];
const TOOL_GLOBS = ['*', '*', '*', 'http_*', 'search', '*fetch*', '?earch', 'x'];
const SERVER_GLOBS = ['*', '*', '*', 'srv-*', 'srv-a'];
const TOOLS = [null, 'http_fetch', 'search', 'fetch', 'x'];
const SERVERS = [null, 'srv-a', 'srv-b'];
const PORTS = [80, 443, 8080];

const entryArb: fc.Arbitrary<Entry> = fc
  .oneof(fc.constantFrom(...NAMES), fc.constantFrom(...WILDCARDS), fc.constantFrom(...ADDRESSES), fc.constantFrom(...CIDRS))
  .map((text) => {
    const e = parseEntry(text);
    if ('error' in e) throw new Error(e.error);
    return e;
  });

const listsArb = fc.option(
  fc
    .record({ allow: fc.array(entryArb, { maxLength: 3 }), deny: fc.array(entryArb, { maxLength: 3 }) })
    .filter((l) => l.allow.length + l.deny.length > 0),
  { nil: null, freq: 4 },
);

const AFTER_TOOL_GLOBS = ['*', 'read_*', 'read_?ecret', 'fetch', '*secret*', '*_file'];
const HISTORY_TOOLS = [null, 'read_file', 'read_secret', 'get_secret', 'fetch', 'search'];
const WINDOWS = [1, 5, 60, 600];
/** Ages (ms) around the windows' edges; negative: recorded "after" now (a clock stepped back). */
const AGES = [-2000, 0, 1, 999, 1000, 1001, 4999, 5000, 5001, 59_999, 60_000, 60_001, 600_000, 600_001, 3_600_000];
const CALL_IDS = [null, 'c1', 'c2'];

const afterArb: fc.Arbitrary<AfterSpec | null> = fc.option(
  fc.record({
    toolGlob: fc.constantFrom(...AFTER_TOOL_GLOBS),
    serverGlob: fc.constantFrom(...SERVER_GLOBS),
    hosts: fc.option(fc.array(entryArb, { minLength: 1, maxLength: 3 }), { nil: null, freq: 2 }),
    withinSeconds: fc.constantFrom(...WINDOWS),
  }),
  { nil: null, freq: 2 },
);

const historyCallArb: fc.Arbitrary<HistoryCall> = fc
  .record({
    age: fc.constantFrom(...AGES),
    tool: fc.constantFrom(...HISTORY_TOOLS),
    callId: fc.constantFrom(...CALL_IDS, 'h'),
    server: fc.constantFrom(...SERVERS),
    egress: fc.option(
      fc.record({
        host: fc.oneof(fc.constantFrom(...NAMES), fc.constantFrom(...ADDRESSES)),
        address: fc.constantFrom(...ADDRESSES),
        dispatched: fc.boolean(),
      }),
      { nil: null, freq: 2 },
    ),
  })
  .map(({ age, tool, callId, server, egress }) => {
    // An IP-literal call dials its own address; a refused call dialled nothing.
    const hostIp = egress && /^[\d.]+$|:/.test(egress.host) ? egress.host : null;
    const address = egress?.dispatched ? ip(hostIp ?? egress.address) : null;
    return {
      at: NOW - age,
      tool,
      callId,
      server,
      sessionId: 'S',
      host: egress ? (hostIp ? ip(hostIp).text : egress.host) : null,
      address,
      dispatched: egress ? egress.dispatched : null,
    };
  });

/** A history as the store hands it over: newest first. Call ids 'h' become unique. */
const historyArb = fc
  .array(historyCallArb, { maxLength: 8 })
  .map((calls) => calls.map((c, i) => (c.callId === 'h' ? { ...c, callId: `h${i}` } : c)).sort((a, b) => b.at - a.at));

const ruleArb = fc.record({
  priority: fc.integer({ min: -2, max: 6 }),
  stage: fc.constantFrom<Stage>('egress', 'egress', 'egress', 'egress', 'inbound'),
  verdict: fc.constantFrom<RuleVerdict>('allow', 'deny', 'audit', 'allow', 'deny', 'pending_approval'),
  toolGlob: fc.constantFrom(...TOOL_GLOBS),
  serverGlob: fc.constantFrom(...SERVER_GLOBS),
  lists: listsArb,
  ports: fc.option(fc.constantFrom([443], [80, 443], [8080]), { nil: null, freq: 3 }),
  after: afterArb,
});

const policyArb: fc.Arbitrary<PolicySpec> = fc
  .record({
    defaultVerdict: fc.constantFrom<'allow' | 'deny'>('allow', 'deny'),
    shadowMode: fc.integer({ min: 0, max: 4 }).map((n) => n === 0),
    observeMode: fc.boolean(),
    rules: fc.array(ruleArb, { maxLength: 12 }),
  })
  .map((p) => ({
    ...p,
    rules: p.rules.map((r, i): RuleSpec => ({ ...r, position: i + 1, id: `r${i + 1}`, label: null })),
  }));

const callArb = fc.record({
  tool: fc.constantFrom(...TOOLS),
  server: fc.constantFrom(...SERVERS),
  port: fc.constantFrom(...PORTS),
  name: fc.option(fc.constantFrom(...NAMES), { nil: null, freq: 5 }),
  addresses: fc.uniqueArray(fc.constantFrom(...ADDRESSES), { minLength: 1, maxLength: 3 }),
  callId: fc.constantFrom(...CALL_IDS),
  history: historyArb,
});

/** The part of an earlier call both evaluators must agree on. */
function describeAfter(a: { call_id: string | null; tool: string | null; seconds_ago: number } | null): string {
  return a === null ? 'none' : `${a.call_id}/${a.tool}/${a.seconds_ago}`;
}

const baseline = createBaseline();

t.test('indexed and reference evaluators agree', async (t) => {
  let checked = 0;
  // How often a sequence clause mattered: decided by one, blocked by name by one, skipped for lack of history.
  let decidedAfter = 0;
  let byNameAfter = 0;
  let clauseFailed = 0;
  fc.assert(
    fc.property(policyArb, fc.array(callArb, { minLength: 1, maxLength: 6 }), fc.boolean(), (spec, calls, withBaseline) => {
      const policy = compilePolicy(spec);
      for (const call of calls) {
        const ctx: CallContext = callContext({
          tool: call.tool,
          server: call.server,
          port: call.port,
          callId: call.callId,
          now: NOW,
          history: call.history,
        });
        const addresses: IpAddress[] = call.name === null ? [ip(call.addresses[0] as string)] : call.addresses.map(ip);
        const classify = withBaseline ? (a: IpAddress) => baseline(a, call.port) : () => null;
        const got = decide(policy, ctx, { name: call.name }, addresses, {
          classify: withBaseline ? baseline : undefined,
          explain: checked % 7 === 0,
        });
        const want = refDecide(spec, ctx, call.name, addresses, classify);
        const summary = (d: { verdict: string; dispatched: boolean; shadow: boolean; reason: string }) =>
          `${d.verdict}/${d.dispatched}/${d.shadow}/${d.reason}`;
        if (summary(got) !== summary(want) || (got.rule?.id ?? null) !== want.rule) {
          throw new Error(`decision differs: got ${summary(got)} ${got.rule?.id} want ${summary(want)} ${want.rule}`);
        }
        const wantAfter =
          want.after === null ? null : { call_id: want.after.call.callId, tool: want.after.call.tool, seconds_ago: want.after.secondsAgo };
        if (describeAfter(got.after) !== describeAfter(wantAfter))
          throw new Error(`earlier call differs: got ${describeAfter(got.after)} want ${describeAfter(wantAfter)}`);
        if (got.after !== null) decidedAfter++;
        if (spec.rules.some((r) => r.after !== null && r.stage === 'egress' && refEarlier(r.after, ctx) === null)) clauseFailed++;
        const perAddress = got.trace.map((e) => e.rule?.id ?? null);
        if (JSON.stringify(perAddress) !== JSON.stringify(want.perAddress))
          throw new Error(`trace differs: ${perAddress.join(',')} vs ${want.perAddress.join(',')}`);
        for (const entry of got.trace) {
          if (entry.not_matched && entry.decided_by !== 'ssrf_baseline') {
            const before = policy.allRules.findIndex((r) => r.id === entry.rule?.id);
            const expected = (before === -1 ? policy.allRules : policy.allRules.slice(0, before)).map((r) => r.id);
            if (JSON.stringify(entry.not_matched.map((n) => n.rule)) !== JSON.stringify(expected))
              throw new Error('explanation lists the wrong rules');
          }
        }
        if (call.name !== null) {
          const byName = decideByName(policy, ctx, { name: call.name });
          const refByName = refBlockedByName(spec, ctx, call.name);
          const gotByName = byName === null ? null : (byName.rule?.id ?? '');
          if (gotByName !== refByName) throw new Error(`name-only refusal differs: got ${gotByName} want ${refByName}`);
          const byNameRule = refByName ? sortedEgressRules(spec).find((r) => r.id === refByName) : undefined;
          const refByNameEarlier = byNameRule?.after ? refEarlier(byNameRule.after, ctx) : null;
          const wantByNameAfter =
            refByNameEarlier === null
              ? null
              : {
                  call_id: refByNameEarlier.callId,
                  tool: refByNameEarlier.tool,
                  seconds_ago: Math.max(0, NOW - refByNameEarlier.at) / 1000,
                };
          if (byName?.after) byNameAfter++;
          if (byName !== null && describeAfter(byName.after) !== describeAfter(wantByNameAfter))
            throw new Error(`name-only earlier call differs: got ${describeAfter(byName.after)} want ${describeAfter(wantByNameAfter)}`);
          // Soundness: refused by name means refused for any answer DNS could give.
          if (byName !== null && decide(policy, ctx, { name: call.name }, addresses).dispatched) {
            throw new Error('a name refused without DNS would have been dispatched');
          }
        }
        checked++;
      }
    }),
    { numRuns: 4000, seed: Number(process.env.FC_SEED ?? 20261122) },
  );
  t.ok(checked > 4000, `${checked} calls compared`);
  t.ok(decidedAfter > 300, `${decidedAfter} decided by a rule with after`);
  t.ok(byNameAfter > 40, `${byNameAfter} refused by name by a rule with after`);
  t.ok(clauseFailed > 1000, `${clauseFailed} with a clause that did not hold`);
});

t.test('the index keeps first-match exact across thousands of rules', async (t) => {
  // Many overlapping entries for one destination; the lowest priority (then file order) must win.
  const rules: RuleSpec[] = [];
  for (let i = 0; i < 3000; i++) {
    const kinds = ['34.0.0.0/8', 'a.example.com', '*.example.com', '34.1.2.3', '::/0'];
    const e = parseEntry(kinds[i % kinds.length] as string) as Entry;
    rules.push({
      position: i + 1,
      id: `r${i + 1}`,
      label: null,
      priority: 3000 - Math.floor(i / 2),
      stage: 'egress',
      toolGlob: i % 3 === 0 ? 'only-this' : '*',
      serverGlob: '*',
      verdict: i % 2 ? 'allow' : 'deny',
      lists: { allow: i % 2 ? [e] : [], deny: i % 2 ? [] : [e] },
      ports: null,
      after: null,
    });
  }
  const spec: PolicySpec = { defaultVerdict: 'deny', shadowMode: false, observeMode: false, rules };
  const policy = compilePolicy(spec);
  for (const tool of [null, 'only-this', 'other']) {
    const ctx = callContext({ tool, server: null, port: 443 });
    const got = decide(policy, ctx, { name: 'a.example.com' }, [ip('34.1.2.3')]);
    const want = refDecide(spec, ctx, 'a.example.com', [ip('34.1.2.3')]);
    t.equal(got.rule?.id, want.rule, `tool ${tool}`);
  }
});
