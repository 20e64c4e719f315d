/**
 * IPv6 spellings of IPv4 ranges and broad baseline exemptions, end to end through the real proxy
 * inside the loopback-only namespace (issue 10, items 4 and 5): a denied IPv4 range stays denied
 * when the guarded server writes it as NAT64, 6to4 or IPv4-compatible IPv6, literally or through a
 * name whose only answer is such an AAAA record; and `baseline.allow_cidrs: [169.254.0.0/16]`
 * does not open cloud metadata. Fake servers on the trap addresses record zero connections.
 */
import t from 'tap';
import { startDnsServer } from '../helpers/dns-server.js';
import { assertLoopbackOnlyNamespace } from '../helpers/netns.js';
import { startTestProxy } from '../helpers/proxy.js';
import { connectRequest, getRequest, rawRequest } from '../helpers/raw.js';
import { startTrap } from '../helpers/upstream.js';

assertLoopbackOnlyNamespace();

const send = (port: number, form: 'CONNECT' | 'GET', authority: string) =>
  rawRequest(port, form === 'CONNECT' ? connectRequest(authority) : getRequest(`http://${authority}/`, authority));

t.test('deny [93.184.216.0/24] holds against every IPv6 spelling of the range', async (t) => {
  const denied = await startTrap('93.184.216.34', 0);
  const exempt = await startTrap('93.184.216.35', denied.port);
  const port = denied.port;
  const dns = await startDnsServer({
    'nat64.test': { AAAA: ['64:ff9b::5db8:d822'] },
    'compat.test': { AAAA: ['::5db8:d822'] },
    'sixtofour.test': { AAAA: ['2002:5db8:d822::1'] },
  });
  const proxy = await startTestProxy({
    dns: dns.address,
    policy: `version: 1
default_verdict: allow
rules:
  - {id: deny-range, priority: 1, verdict: deny, egress: {deny: [93.184.216.0/24], allow: [93.184.216.35]}}
`,
  });
  t.teardown(async () => {
    await proxy.stop();
    await dns.close();
    await denied.close();
    await exempt.close();
  });

  const spellings = [
    `93.184.216.34:${port}`,
    `[64:ff9b::93.184.216.34]:${port}`,
    `[64:ff9b::5db8:d822]:${port}`,
    `[::93.184.216.34]:${port}`,
    `[2002:5db8:d822::1]:${port}`,
    `nat64.test:${port}`,
    `compat.test:${port}`,
    `sixtofour.test:${port}`,
  ];
  for (const authority of spellings) {
    for (const form of ['CONNECT', 'GET'] as const) {
      const r = await send(proxy.port, form, authority);
      t.equal(r.status, 403, `${form} ${authority}: refused`);
      t.equal(r.headers['x-egress-rule'], 'deny-range', `${form} ${authority}: by the IPv4 rule`);
      t.match(JSON.parse(r.body).error, { code: 'firewall_blocked', reason: 'rule' });
    }
  }
  t.equal(denied.connections, 0, 'the denied address saw no connection');
  const refusals = proxy.events('egress.decision').filter((e) => e.rule && (e.rule as { id: string }).id === 'deny-range');
  t.equal(refusals.length, spellings.length * 2, 'one refusal event per call');
  t.ok(
    refusals.every((e) => e.dispatched === false && e.pinned_address === null),
    'none was dialled',
  );

  // Control: the exempted neighbour is dialled, so the trap setup would have seen a dial.
  const ok = await send(proxy.port, 'CONNECT', `93.184.216.35:${port}`);
  t.equal(ok.status, 200, 'the exempt address is tunnelled');
  t.equal(exempt.connections, 1, 'and its trap saw the connection');
  const exemptNat64 = await send(proxy.port, 'CONNECT', `[64:ff9b::93.184.216.35]:${port}`);
  t.not(
    exemptNat64.headers['x-egress-error'],
    'firewall_blocked',
    'the NAT64 spelling of the exempt address is exempt too (dialled; nothing routes it here)',
  );
});

t.test('a broad baseline exemption does not open metadata', async (t) => {
  const meta = await startTrap('169.254.169.254', 0);
  const meta6 = await startTrap('fd00:ec2::254', meta.port);
  const internal = await startTrap('10.1.2.3', meta.port);
  const port = meta.port;
  const dns = await startDnsServer({ 'meta.test': { A: ['169.254.169.254'] }, 'meta6.test': { AAAA: ['fd00:ec2::254'] } });
  const proxy = await startTestProxy({
    dns: dns.address,
    policy: 'version: 1\ndefault_verdict: allow\n',
    config: 'baseline: {allow_cidrs: [169.254.0.0/16, "fd00::/8", "64:ff9b::/96", 10.0.0.0/8, 127.0.0.0/8]}',
  });
  t.teardown(async () => {
    await proxy.stop();
    await dns.close();
    await Promise.all([meta.close(), meta6.close(), internal.close()]);
  });

  for (const authority of [
    `169.254.169.254:${port}`,
    `[fd00:ec2::254]:${port}`,
    `[64:ff9b::169.254.169.254]:${port}`,
    `[::ffff:169.254.169.254]:${port}`,
    `meta.test:${port}`,
    `meta6.test:${port}`,
  ]) {
    for (const form of ['CONNECT', 'GET'] as const) {
      const r = await send(proxy.port, form, authority);
      t.equal(r.status, 403, `${form} ${authority}: refused`);
      t.match(JSON.parse(r.body).error, { reason: 'ssrf_baseline', address_class: 'metadata' }, `${form} ${authority}: as metadata`);
    }
  }
  t.same([meta.connections, meta6.connections], [0, 0], 'the metadata servers saw no connection');

  const warnings = proxy.events('baseline.exemption_overlaps_metadata');
  t.same(
    warnings.map((w) => [w.entry, w.level]),
    [
      ['169.254.0.0/16', 'warn'],
      ['fd00::/8', 'warn'],
      ['64:ff9b::/96', 'warn'],
    ],
    'each broad entry that covers metadata is named in a warning at start',
  );
  t.match(warnings[0], { metadata: ['169.254.169.254', '169.254.170.2'], msg: /169\.254\.0\.0\/16 .*stays refused/ });

  // Control: the exemptions are in force for what they were written for.
  const r = await send(proxy.port, 'CONNECT', `10.1.2.3:${port}`);
  t.equal(r.status, 200, 'an exempted private address is reachable');
  t.equal(internal.connections, 1);
});

t.test('metadata named exactly is exempt, and no warning is logged for it', async (t) => {
  const meta = await startTrap('169.254.169.254', 0);
  const proxy = await startTestProxy({
    policy: 'version: 1\ndefault_verdict: allow\n',
    config: 'baseline: {allow_cidrs: [169.254.169.254, 127.0.0.0/8]}',
  });
  t.teardown(async () => {
    await proxy.stop();
    await meta.close();
  });
  const r = await send(proxy.port, 'CONNECT', `169.254.169.254:${meta.port}`);
  t.equal(r.status, 200, 'the bare address exempts it');
  t.equal(meta.connections, 1);
  t.same(proxy.events('baseline.exemption_overlaps_metadata'), []);
});
