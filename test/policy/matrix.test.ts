/**
 * The verdict × list matrix: allow/deny/audit × in-scope list present/empty × exemption hit/miss
 * × host/IP/CIDR entry × IPv4/IPv6/IPv4-mapped, plus case, trailing dots, IDN, ports and globs.
 */
import t from 'tap';
import { compileYaml, decideFor } from '../helpers/policy.js';

const families = {
  v4: { address: '34.1.2.3', cidr: '34.1.0.0/16', other: '35.0.0.1' },
  v6: { address: '2600:1::5', cidr: '2600:1::/32', other: '2600:2::1' },
  // The entry is written IPv4-mapped; the destination resolves to the IPv4 address.
  mapped: { address: '34.1.2.3', cidr: '::ffff:34.1.0.0/112', other: '::ffff:35.0.0.1', literal: '::ffff:34.1.2.3' },
} as const;

for (const verdict of ['allow', 'deny', 'audit'] as const) {
  const scopeSide = verdict === 'allow' ? 'allow' : 'deny';
  const exemptSide = verdict === 'allow' ? 'deny' : 'allow';
  const defaultVerdict = verdict === 'allow' ? 'deny' : 'allow';
  for (const scopePresent of [true, false]) {
    for (const exemptHit of [true, false]) {
      for (const kind of ['host', 'ip', 'cidr'] as const) {
        for (const [family, f] of Object.entries(families)) {
          const name = `${verdict} scope:${scopePresent ? 'listed' : 'empty'} exempt:${exemptHit ? 'hit' : 'miss'} ${kind} ${family}`;
          t.test(name, async (t) => {
            const matching = kind === 'host' ? 'svc.example.com' : kind === 'ip' ? ('literal' in f ? f.literal : f.address) : f.cidr;
            const notMatching = kind === 'host' ? 'other.example.com' : f.other;
            const scope = scopePresent ? [matching] : [];
            const exempt = exemptHit ? [matching] : [notMatching];
            const policy = compileYaml(`version: 1
default_verdict: ${defaultVerdict}
rules:
  - id: r
    priority: 1
    verdict: ${verdict}
    egress: {${scopeSide}: ${JSON.stringify(scope)}, ${exemptSide}: ${JSON.stringify(exempt)}}
`);
            const { decision } = await decideFor(policy, { destination: 'svc.example.com:443', resolves: [f.address], baseline: false });
            const matches = !exemptHit;
            t.equal(decision.reason, matches ? 'rule' : 'default');
            t.equal(decision.verdict, matches ? verdict : defaultVerdict);
            t.equal(decision.dispatched, (matches ? verdict : defaultVerdict) !== 'deny');
            // The same destination as an IP literal (mapped spelling included): host entries cannot match it.
            const literal = family === 'v6' ? `[${f.address}]:443` : family === 'mapped' ? `[::ffff:${f.address}]:443` : `${f.address}:443`;
            const byLiteral = await decideFor(policy, { destination: literal, baseline: false });
            const literalInScope = !scopePresent || kind !== 'host';
            const literalExempt = exemptHit && kind !== 'host';
            const literalMatches = literalInScope && !literalExempt;
            t.equal(byLiteral.decision.reason, literalMatches ? 'rule' : 'default', 'as an IP literal');
            t.same(byLiteral.queries, [], 'an IP literal is never resolved');
          });
        }
      }
    }
  }
}

t.test('IPv4 entries never match IPv6 addresses and the reverse', async (t) => {
  const policy = compileYaml(`version: 1
default_verdict: allow
rules:
  - {id: all-v6, priority: 1, verdict: deny, egress: {deny: ["::/0"]}}
`);
  t.equal((await decideFor(policy, { destination: '10.0.0.1:80', baseline: false })).decision.reason, 'default', '::/0 does not match 10.0.0.1');
  t.equal((await decideFor(policy, { destination: '[::ffff:10.0.0.1]:80', baseline: false })).decision.reason, 'default', 'nor its mapped form');
  t.equal((await decideFor(policy, { destination: '[2600::1]:80', baseline: false })).decision.rule?.id, 'all-v6');
  const v4 = compileYaml(`version: 1
default_verdict: allow
rules:
  - {id: all-v4, priority: 1, verdict: deny, egress: {deny: [0.0.0.0/0]}}
`);
  t.equal((await decideFor(v4, { destination: '[2600::1]:80', baseline: false })).decision.reason, 'default');
  t.equal((await decideFor(v4, { destination: '[::ffff:1.2.3.4]:80', baseline: false })).decision.rule?.id, 'all-v4', 'a mapped destination is IPv4');
  const mappedAll = compileYaml(`version: 1
default_verdict: allow
rules:
  - {id: mapped-all, priority: 1, verdict: deny, egress: {deny: ["::ffff:0:0/96"]}}
`);
  t.equal((await decideFor(mappedAll, { destination: '1.2.3.4:80', baseline: false })).decision.rule?.id, 'mapped-all', '::ffff:0:0/96 is the IPv4 block 0.0.0.0/0');
  t.equal((await decideFor(mappedAll, { destination: '[2600::1]:80', baseline: false })).decision.reason, 'default');
});

t.test('host names: case, trailing dots, IDN, wildcards', async (t) => {
  const policy = compileYaml(`version: 1
rules:
  - {id: exact, priority: 1, verdict: allow, egress: {allow: [API.Example.COM.]}}
  - {id: idn, priority: 2, verdict: allow, egress: {allow: [bücher.example]}}
  - {id: wild, priority: 3, verdict: allow, egress: {allow: ["*.svc.example"]}}
  - {id: puny, priority: 4, verdict: allow, egress: {allow: [xn--mnchen-3ya.example]}}
`);
  const allowedBy = async (destination: string) => (await decideFor(policy, { destination, baseline: false })).decision.rule?.id ?? null;
  t.equal(await allowedBy('api.example.com:443'), 'exact');
  t.equal(await allowedBy('API.EXAMPLE.COM.:443'), 'exact');
  t.equal(await allowedBy('www.api.example.com:443'), null, 'an exact entry does not match subdomains');
  t.equal(await allowedBy('xn--bcher-kva.example:443'), 'idn', 'punycode destination, unicode entry');
  t.equal(await allowedBy('BÜCHER.example:443'), 'idn', 'unicode destination');
  t.equal(await allowedBy('münchen.example:443'), 'puny', 'unicode destination, punycode entry');
  t.equal(await allowedBy('a.svc.example:443'), 'wild');
  t.equal(await allowedBy('a.b.svc.example.:443'), 'wild', 'deeper names and trailing dot');
  t.equal(await allowedBy('svc.example:443'), null, 'a wildcard does not match its apex');
  t.equal(await allowedBy('xsvc.example:443'), null, 'a wildcard matches whole labels');
});

t.test('ports and globs', async (t) => {
  const policy = compileYaml(`version: 1
rules:
  - {id: tls, priority: 1, verdict: allow, ports: [443, 8443]}
  - {id: fetchers, priority: 2, verdict: allow, tool_name_glob: "*fetch*"}
  - {id: one-char, priority: 3, verdict: allow, tool_name_glob: "t?l"}
  - {id: servers, priority: 4, verdict: allow, server_glob: "team-*"}
  - {id: literal-glob, priority: 5, verdict: allow, tool_name_glob: "a.b+c"}
`);
  const rule = async (call: { destination: string; tool?: string | null; server?: string | null }) =>
    (await decideFor(policy, { ...call, baseline: false })).decision.rule?.id ?? null;
  t.equal(await rule({ destination: 'x.example:443' }), 'tls');
  t.equal(await rule({ destination: 'x.example:8443' }), 'tls');
  t.equal(await rule({ destination: 'x.example:80' }), null);
  t.equal(await rule({ destination: 'x.example:80', tool: 'web_fetch_url' }), 'fetchers');
  t.equal(await rule({ destination: 'x.example:80', tool: 'fetch' }), 'fetchers', '* matches an empty run');
  t.equal(await rule({ destination: 'x.example:80', tool: 'Fetch' }), null, 'globs are case-sensitive');
  t.equal(await rule({ destination: 'x.example:80', tool: 'tööl' }), null, '? is one character');
  t.equal(await rule({ destination: 'x.example:80', tool: 'töl' }), 'one-char', '? matches one non-ASCII character');
  t.equal(await rule({ destination: 'x.example:80', server: 'team-a' }), 'servers');
  t.equal(await rule({ destination: 'x.example:80', server: null }), null, 'an unknown server matches only *');
  t.equal(await rule({ destination: 'x.example:80', tool: 'a.b+c' }), 'literal-glob', 'regex characters are literal');
  t.equal(await rule({ destination: 'x.example:80', tool: 'aXb+c' }), null);
});
