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
  t.equal(
    (await decideFor(policy, { destination: '10.0.0.1:80', baseline: false })).decision.reason,
    'default',
    '::/0 does not match 10.0.0.1',
  );
  t.equal(
    (await decideFor(policy, { destination: '[::ffff:10.0.0.1]:80', baseline: false })).decision.reason,
    'default',
    'nor its mapped form',
  );
  t.equal((await decideFor(policy, { destination: '[2600::1]:80', baseline: false })).decision.rule?.id, 'all-v6');
  const v4 = compileYaml(`version: 1
default_verdict: allow
rules:
  - {id: all-v4, priority: 1, verdict: deny, egress: {deny: [0.0.0.0/0]}}
`);
  t.equal((await decideFor(v4, { destination: '[2600::1]:80', baseline: false })).decision.reason, 'default');
  t.equal(
    (await decideFor(v4, { destination: '[::ffff:1.2.3.4]:80', baseline: false })).decision.rule?.id,
    'all-v4',
    'a mapped destination is IPv4',
  );
  const mappedAll = compileYaml(`version: 1
default_verdict: allow
rules:
  - {id: mapped-all, priority: 1, verdict: deny, egress: {deny: ["::ffff:0:0/96"]}}
`);
  t.equal(
    (await decideFor(mappedAll, { destination: '1.2.3.4:80', baseline: false })).decision.rule?.id,
    'mapped-all',
    '::ffff:0:0/96 is the IPv4 block 0.0.0.0/0',
  );
  t.equal((await decideFor(mappedAll, { destination: '[2600::1]:80', baseline: false })).decision.reason, 'default');
});

t.test('an IPv6 address that carries an IPv4 address is on IPv4 entries through it (policy.md)', async (t) => {
  const deny = compileYaml(`version: 1
default_verdict: allow
rules:
  - {id: deny-range, priority: 1, verdict: deny, egress: {deny: [93.184.216.0/24]}}
`);
  const rows: Array<[string, string[] | undefined, string | null, string]> = [
    // [destination, AAAA/A answers for a name, deciding rule (null: default), why]
    ['93.184.216.34:443', undefined, 'deny-range', 'the IPv4 address itself'],
    ['[64:ff9b::93.184.216.34]:443', undefined, 'deny-range', 'NAT64, dotted'],
    ['[64:ff9b::5db8:d822]:443', undefined, 'deny-range', 'NAT64, hex'],
    ['[0064:FF9B:0:0:0:0:5DB8:D822]:443', undefined, 'deny-range', 'NAT64, uncompressed upper case'],
    ['[::93.184.216.34]:443', undefined, 'deny-range', 'IPv4-compatible, dotted'],
    ['[::5db8:d822]:443', undefined, 'deny-range', 'IPv4-compatible, hex'],
    ['[2002:5db8:d822::1]:443', undefined, 'deny-range', '6to4'],
    ['[2002:5db8:d8ff:ffff:ffff:ffff:ffff:ffff]:443', undefined, 'deny-range', '6to4, last address of the /48'],
    ['[64:ff9b::93.184.217.1]:443', undefined, null, 'NAT64 of an address outside the range'],
    ['[2002:5db8:d922::1]:443', undefined, null, '6to4 of an address outside the range'],
    ['[2606:4700::1111]:443', undefined, null, 'an IPv6 address that carries nothing'],
    ['nat64.test:443', ['64:ff9b::5db8:d822'], 'deny-range', 'a name whose only answer is a NAT64 AAAA'],
    ['compat.test:443', ['::5db8:d823'], 'deny-range', 'a name whose only answer is an IPv4-compatible AAAA'],
    ['sixtofour.test:443', ['2002:5db8:d822::1'], 'deny-range', 'a name whose only answer is a 6to4 AAAA'],
    ['mixed.test:443', ['2606:4700::1111', '64:ff9b::5db8:d822'], 'deny-range', 'one carrying answer among others blocks the call'],
    ['clean.test:443', ['2606:4700::1111', '64:ff9b::5db8:d922'], null, 'no answer carries a denied address'],
  ];
  for (const [destination, resolves, rule, why] of rows) {
    const { decision, queries } = await decideFor(deny, { destination, resolves });
    t.equal(decision.rule?.id ?? null, rule, `${destination}: ${why}`);
    t.equal(decision.dispatched, rule === null, `${destination}: dispatched only when no rule refused`);
    if (resolves === undefined) t.same(queries, [], 'an IP literal is never resolved');
  }
  const { decision } = await decideFor(deny, { destination: '[64:ff9b::93.184.216.34]:443' });
  t.match(decision.trace[0], { address: '64:ff9b::5db8:d822', rule: { id: 'deny-range' } }, 'the trace names the address as dialled');
});

t.test('embedded IPv4: both polarities, exemptions, and the baseline still judges the carried address', async (t) => {
  const allow = compileYaml(`version: 1
default_verdict: deny
rules:
  - {id: allow-range, priority: 1, verdict: allow, egress: {allow: [93.184.216.0/24, 10.0.0.0/8], deny: [93.184.216.99]}}
`);
  const rule = async (policy: ReturnType<typeof compileYaml>, destination: string) => {
    const { decision } = await decideFor(policy, { destination });
    return `${decision.rule?.id ?? decision.reason}${decision.address_class ? `/${decision.address_class}` : ''}`;
  };
  t.equal(
    await rule(allow, '[64:ff9b::93.184.216.34]:443'),
    'allow-range',
    'an allow list admits the NAT64 spelling of an allowed address',
  );
  t.equal(await rule(allow, '[2002:5db8:d822::]:443'), 'allow-range', 'and the 6to4 spelling');
  t.equal(await rule(allow, '[64:ff9b::93.184.216.99]:443'), 'default', 'its deny exemption is matched through the carried address too');
  t.equal(
    await rule(allow, '[64:ff9b::10.1.2.3]:443'),
    'ssrf_baseline/private',
    'allowed by the list, refused by the baseline (it judges the carried address)',
  );
  t.equal(await rule(allow, '[::169.254.169.254]:443'), 'ssrf_baseline/metadata');
  t.equal(await rule(allow, '[2606:4700::1111]:443'), 'default');

  const exempt = compileYaml(`version: 1
default_verdict: allow
rules:
  - {id: no-nat64, priority: 1, verdict: deny, egress: {deny: ["64:ff9b::/96"], allow: [93.184.216.34]}}
  - {id: no-v4, priority: 2, verdict: deny, egress: {deny: [0.0.0.0/0]}}
`);
  t.equal(await rule(exempt, '[64:ff9b::93.184.216.35]:443'), 'no-nat64', 'an IPv6 entry matches the address as itself');
  t.equal(
    await rule(exempt, '[64:ff9b::93.184.216.34]:443'),
    'no-v4',
    'exempt from no-nat64 through the carried address; caught by the IPv4 /0',
  );
  t.equal(await rule(exempt, '[2606:4700::1111]:443'), 'default', '0.0.0.0/0 still does not match an IPv6 address that carries nothing');
  t.equal(await rule(exempt, '[::1]:443'), 'ssrf_baseline/loopback', '::1 is itself, not 0.0.0.1');
  const noBaseline = await decideFor(exempt, { destination: '[::1]:443', baseline: false });
  t.equal(noBaseline.decision.reason, 'default', 'without the baseline, ::1 is on no IPv4 entry');
  const unspecified = await decideFor(exempt, { destination: '[::]:443', baseline: false });
  t.equal(unspecified.decision.reason, 'default', ':: is on no IPv4 entry');
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
