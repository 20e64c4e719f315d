/**
 * Differential test: the indexed evaluator against the reference evaluator (a plain loop written
 * from policy.md) on generated policies and calls. They must agree on the verdict, the deciding
 * rule, and the rule of every candidate; the name-only refusal (step 7) must agree with the
 * reference's rule-by-rule reasoning, and must be sound: a name refused without DNS is refused
 * whatever it resolves to.
 */
import fc from 'fast-check';
import t from 'tap';
import type { IpAddress } from '../../src/net/address.js';
import { createBaseline } from '../../src/net/baseline.js';
import { compilePolicy } from '../../src/policy/compile.js';
import { parseEntry } from '../../src/policy/entries.js';
import { decide, decideByName } from '../../src/policy/evaluate.js';
import type { CallContext, Entry, PolicySpec, RuleSpec, RuleVerdict, Stage } from '../../src/policy/types.js';
import { callContext, ip } from '../helpers/policy.js';
import { refBlockedByName, refDecide } from '../helpers/reference.js';

const NAMES = ['a.example.com', 'b.example.com', 'x.a.example.com', 'y.x.a.example.com', 'api.test', 'evil.test', 'example.com'];
const WILDCARDS = ['*.example.com', '*.a.example.com', '*.x.a.example.com', '*.api.test'];
// IPv6 forms that carry an IPv4 address (policy.md): NAT64, IPv4-compatible and 6to4 spellings of
// the IPv4 addresses above, and `::1`, which carries none.
const CARRYING = ['64:ff9b::2201:203', '64:ff9b::5db8:d822', '::2201:909', '::3401:203', '2002:2201:203::1', '2002:5db8:d822:1::9', '::1'];
const ADDRESSES = ['34.1.2.3', '34.1.9.9', '34.200.0.1', '52.1.2.3', '93.184.216.34', '10.0.0.5', '2600:1::5', '2600:1:2::9', '2a00::1', '2600::1', ...CARRYING];
const CIDRS = ['34.0.0.0/8', '34.1.0.0/16', '34.1.2.3/32', '52.0.0.0/8', '0.0.0.0/0', '93.184.216.0/24', '10.0.0.0/8', '34.1.2.0/23', '2600::/16', '2600:1::/32', '2600:1::5/128', '::/0', '2600::/12', '::ffff:34.0.0.0/104', '2600:1:2::/47', '64:ff9b::/96', '2002::/16', '64:ff9b::2201:0/112', '::/96', '0.0.0.0/8', '2002:5db8:d822::/48'];
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

const ruleArb = fc.record({
  priority: fc.integer({ min: -2, max: 6 }),
  stage: fc.constantFrom<Stage>('egress', 'egress', 'egress', 'egress', 'inbound'),
  verdict: fc.constantFrom<RuleVerdict>('allow', 'deny', 'audit', 'allow', 'deny', 'pending_approval'),
  toolGlob: fc.constantFrom(...TOOL_GLOBS),
  serverGlob: fc.constantFrom(...SERVER_GLOBS),
  lists: listsArb,
  ports: fc.option(fc.constantFrom([443], [80, 443], [8080]), { nil: null, freq: 3 }),
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
    rules: p.rules.map((r, i): RuleSpec => ({ ...r, position: i + 1, id: `r${i + 1}`, label: null, after: null })),
  }));

const callArb = fc.record({
  tool: fc.constantFrom(...TOOLS),
  server: fc.constantFrom(...SERVERS),
  port: fc.constantFrom(...PORTS),
  name: fc.option(fc.constantFrom(...NAMES), { nil: null, freq: 5 }),
  addresses: fc.uniqueArray(fc.constantFrom(...ADDRESSES), { minLength: 1, maxLength: 3 }),
});

const baseline = createBaseline();

t.test('indexed and reference evaluators agree', async (t) => {
  let checked = 0;
  fc.assert(
    fc.property(policyArb, fc.array(callArb, { minLength: 1, maxLength: 6 }), fc.boolean(), (spec, calls, withBaseline) => {
      const policy = compilePolicy(spec);
      for (const call of calls) {
        const ctx: CallContext = callContext({ tool: call.tool, server: call.server, port: call.port });
        const addresses: IpAddress[] = call.name === null ? [ip(call.addresses[0] as string)] : call.addresses.map(ip);
        const classify = withBaseline ? (a: IpAddress) => baseline(a, call.port) : () => null;
        const got = decide(policy, ctx, { name: call.name }, addresses, { classify: withBaseline ? baseline : undefined, explain: checked % 7 === 0 });
        const want = refDecide(spec, ctx, call.name, addresses, classify);
        const summary = (d: { verdict: string; dispatched: boolean; shadow: boolean; reason: string }) => `${d.verdict}/${d.dispatched}/${d.shadow}/${d.reason}`;
        if (summary(got) !== summary(want) || (got.rule?.id ?? null) !== want.rule) {
          throw new Error(`decision differs: got ${summary(got)} ${got.rule?.id} want ${summary(want)} ${want.rule}`);
        }
        const perAddress = got.trace.map((e) => e.rule?.id ?? null);
        if (JSON.stringify(perAddress) !== JSON.stringify(want.perAddress)) throw new Error(`trace differs: ${perAddress} vs ${want.perAddress}`);
        for (const entry of got.trace) {
          if (entry.not_matched && entry.decided_by !== 'ssrf_baseline') {
            const before = policy.allRules.findIndex((r) => r.id === entry.rule?.id);
            const expected = (before === -1 ? policy.allRules : policy.allRules.slice(0, before)).map((r) => r.id);
            if (JSON.stringify(entry.not_matched.map((n) => n.rule)) !== JSON.stringify(expected)) throw new Error('explanation lists the wrong rules');
          }
        }
        if (call.name !== null) {
          const byName = decideByName(policy, ctx, { name: call.name });
          const refByName = refBlockedByName(spec, ctx, call.name);
          const gotByName = byName === null ? null : (byName.rule?.id ?? '');
          if (gotByName !== refByName) throw new Error(`name-only refusal differs: got ${gotByName} want ${refByName}`);
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
});

t.test('the index keeps first-match exact across thousands of rules', async (t) => {
  // Many overlapping entries for one destination; the lowest priority (then file order) must win.
  const rules: RuleSpec[] = [];
  for (let i = 0; i < 3000; i++) {
    const kinds = ['34.0.0.0/8', 'a.example.com', '*.example.com', '34.1.2.3', '::/0'];
    const e = parseEntry(kinds[i % kinds.length] as string) as Entry;
    rules.push({ position: i + 1, id: `r${i + 1}`, label: null, priority: 3000 - Math.floor(i / 2), stage: 'egress', toolGlob: i % 3 === 0 ? 'only-this' : '*', serverGlob: '*', verdict: i % 2 ? 'allow' : 'deny', lists: { allow: i % 2 ? [e] : [], deny: i % 2 ? [] : [e] }, ports: null, after: null });
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
