/**
 * The SSRF baseline and DNS rebinding, end to end, inside the loopback-only network namespace:
 * fake metadata and internal servers listen on 169.254.169.254, 10.1.2.3, 100.100.100.200 and
 * fd00:ec2::254; every spelling, IPv6 embedding and DNS name for them is refused with the right
 * address_class, and the fake servers record zero connections.
 */
import t from 'tap';
import { startDnsServer } from '../helpers/dns-server.js';
import { assertLoopbackOnlyNamespace } from '../helpers/netns.js';
import { startTestProxy } from '../helpers/proxy.js';
import { connectRequest, getRequest, rawRequest } from '../helpers/raw.js';
import { startTrap, startUpstream } from '../helpers/upstream.js';

assertLoopbackOnlyNamespace();

const allowAll = 'version: 1\ndefault_verdict: allow\n';

const dec = (a: number, b: number, c: number, d: number) => String(((a << 24) | (b << 16) | (c << 8) | d) >>> 0);

t.test('encoded spellings, embeddings and names of internal addresses are refused', async (t) => {
  const traps = await Promise.all([
    startTrap('169.254.169.254', 80),
    startTrap('10.1.2.3', 80),
    startTrap('100.100.100.200', 80),
    startTrap('fd00:ec2::254', 80),
  ]);
  const dns = await startDnsServer({
    'meta.test': { A: ['169.254.169.254'] },
    'internal.test': { A: ['10.1.2.3'] },
    'alibaba.test': { A: ['100.100.100.200'] },
    'v6meta.test': { AAAA: ['fd00:ec2::254'] },
    'mapped.test': { AAAA: ['::ffff:169.254.169.254'] },
    'mixed.test': { A: ['93.184.216.34', '10.1.2.3'] },
    'dual.test': { A: ['93.184.216.34'], AAAA: ['fd00:ec2::254'] },
  });
  const proxy = await startTestProxy({ policy: allowAll, dns: dns.address, exemptLoopback: false });
  t.teardown(async () => {
    await proxy.stop();
    await dns.close();
    await Promise.all(traps.map((x) => x.close()));
  });

  const cases: Array<[string, string, string]> = [
    // [authority as the client writes it, canonical host, address_class]
    ['169.254.169.254:80', '169.254.169.254', 'metadata'],
    [`${dec(169, 254, 169, 254)}:80`, '169.254.169.254', 'metadata'],
    ['0xA9FEA9FE:80', '169.254.169.254', 'metadata'],
    ['0251.0376.0251.0376:80', '169.254.169.254', 'metadata'],
    ['169.254.43518:80', '169.254.169.254', 'metadata'],
    ['169.16689662:80', '169.254.169.254', 'metadata'],
    ['169.254.169.254.:80', '169.254.169.254', 'metadata'],
    ['[::ffff:169.254.169.254]:80', '169.254.169.254', 'metadata'],
    ['[::ffff:a9fe:a9fe]:80', '169.254.169.254', 'metadata'],
    ['[0:0:0:0:0:ffff:a9fe:a9fe]:80', '169.254.169.254', 'metadata'],
    ['[::a9fe:a9fe]:80', '::a9fe:a9fe', 'metadata'],
    ['[64:ff9b::169.254.169.254]:80', '64:ff9b::a9fe:a9fe', 'metadata'],
    ['[2002:a9fe:a9fe::1]:80', '2002:a9fe:a9fe::1', 'metadata'],
    ['10.1.2.3:80', '10.1.2.3', 'private'],
    [`${dec(10, 1, 2, 3)}:80`, '10.1.2.3', 'private'],
    ['012.1.2.3:80', '10.1.2.3', 'private'],
    ['0xa.1.2.3:80', '10.1.2.3', 'private'],
    ['[::ffff:10.1.2.3]:80', '10.1.2.3', 'private'],
    ['[64:ff9b::a01:203]:80', '64:ff9b::a01:203', 'private'],
    ['[2002:a01:203::]:80', '2002:a01:203::', 'private'],
    ['100.100.100.200:80', '100.100.100.200', 'metadata'],
    [`${dec(100, 100, 100, 200)}:80`, '100.100.100.200', 'metadata'],
    ['[fd00:ec2::254]:80', 'fd00:ec2::254', 'metadata'],
    ['[FD00:EC2:0::254]:80', 'fd00:ec2::254', 'metadata'],
    ['meta.test:80', 'meta.test', 'metadata'],
    ['META.Test.:80', 'meta.test', 'metadata'],
    ['internal.test:80', 'internal.test', 'private'],
    ['alibaba.test:80', 'alibaba.test', 'metadata'],
    ['v6meta.test:80', 'v6meta.test', 'metadata'],
    ['mapped.test:80', 'mapped.test', 'metadata'],
    ['mixed.test:80', 'mixed.test', 'private'],
    ['dual.test:80', 'dual.test', 'metadata'],
    ['127.0.0.1:80', '127.0.0.1', 'loopback'],
    ['127.1:80', '127.0.0.1', 'loopback'],
    ['[::1]:80', '::1', 'loopback'],
    ['0.0.0.0:80', '0.0.0.0', 'unspecified'],
    ['0:80', '0.0.0.0', 'unspecified'],
  ];
  for (const [authority, host, addressClass] of cases) {
    for (const form of ['CONNECT', 'GET'] as const) {
      const request = form === 'CONNECT' ? connectRequest(authority) : getRequest(`http://${authority}/latest/meta-data/`, authority);
      const r = await rawRequest(proxy.port, request);
      t.equal(r.status, 403, `${form} ${authority}: 403`);
      t.equal(r.headers['x-egress-error'], 'firewall_blocked');
      t.equal(r.headers['x-egress-rule'], undefined, 'no rule decided');
      const error = JSON.parse(r.body).error;
      t.match(
        error,
        { code: 'firewall_blocked', reason: 'ssrf_baseline', address_class: addressClass, rule: null, destination: { host, port: 80 } },
        `${form} ${authority}`,
      );
      // The destination host itself is in the body; no other address may be (a name's answers go to the log only).
      t.notMatch(
        r.body.split(host).join(''),
        /10\.1\.2\.3|169\.254|100\.100\.100\.200|fd00:ec2|93\.184\.216\.34|2606:4700/i,
        `${form} ${authority}: resolved addresses are not shown to the client`,
      );
      t.notMatch(r.raw, /200 Connection Established/);
    }
  }
  t.same(
    traps.map((x) => x.connections),
    [0, 0, 0, 0],
    'the fake servers saw no connection',
  );
  const refusals = proxy.events('egress.decision').filter((e) => e.reason === 'ssrf_baseline');
  t.equal(refusals.length, cases.length * 2, 'one decision event per call');
  t.ok(refusals.every((e) => e.pinned_address === null && e.dispatched === false));
  t.match(
    refusals.find((e) => e.host === 'mixed.test'),
    { addresses: ['93.184.216.34', '10.1.2.3'], address_class: 'private' },
    'the event log has the addresses',
  );
});

t.test('shadow mode does not soften the baseline; allow_cidrs exempts only what it names; self is never exempt', async (t) => {
  const trap = await startTrap('10.1.2.3', 0);
  const meta = await startTrap('169.254.169.254', trap.port);
  const proxy = await startTestProxy({
    policy: 'version: 1\nshadow_mode: true\n',
    config: 'baseline: {allow_cidrs: [10.1.2.3/32, 127.0.0.0/8, 0.0.0.0/8, "::/128"]}',
  });
  t.teardown(async () => {
    await proxy.stop();
    await trap.close();
    await meta.close();
  });
  const exempt = await rawRequest(proxy.port, getRequest(`http://10.1.2.3:${trap.port}/`, `10.1.2.3:${trap.port}`));
  t.equal(exempt.status, 200, 'an exempted range is reachable (here in shadow mode: would-deny, dispatched)');
  t.equal(trap.connections, 1);
  const refused = await rawRequest(proxy.port, connectRequest(`169.254.169.254:${trap.port}`));
  t.equal(refused.status, 403, 'shadow mode does not soften the baseline');
  t.equal(meta.connections, 0);
  for (const own of [`127.0.0.1:${proxy.port}`, `0.0.0.0:${proxy.port}`, `0:${proxy.port}`, `[::]:${proxy.port}`]) {
    const self = await rawRequest(proxy.port, connectRequest(own));
    t.equal(self.status, 403, own);
    t.equal(JSON.parse(self.body).error.address_class, 'self', `${own}: a request loop is refused even with loopback and 0/8 exempted`);
  }
  const otherPort = await rawRequest(proxy.port, connectRequest(`0.0.0.0:${trap.port}`), 300);
  // Exempted (0/8) and not ours: dialled, and nothing listens on that port of this host.
  t.equal(otherPort.status, 502, 'another port of 0.0.0.0 is not self: it is dialled');
  t.equal(JSON.parse(otherPort.body).error.code, 'upstream_unreachable');
});

t.test('a wildcard listener is self on every local and loopback address', async (t) => {
  const proxy = await startTestProxy({
    policy: allowAll,
    listen: '0.0.0.0:0',
    config: 'baseline: {allow_cidrs: [127.0.0.0/8, 169.254.169.254/32]}',
  });
  t.teardown(() => proxy.stop());
  t.match(proxy.events('listening')[0], { address: '0.0.0.0' });
  for (const own of ['127.0.0.1', '127.0.0.5', '169.254.169.254']) {
    const r = await rawRequest(proxy.port, connectRequest(`${own}:${proxy.port}`));
    t.equal(JSON.parse(r.body).error?.address_class, 'self', `${own}:${proxy.port} is the proxy itself`);
  }
});

t.test('DNS rebinding: the address checked is the address dialled', async (t) => {
  const upstream = await startUpstream('93.184.216.34');
  const trap = await startTrap('169.254.169.254', upstream.port);
  let served = 0;
  const dns = await startDnsServer((name, type) => {
    if (name !== 'rebind.test') return undefined;
    if (type === 'AAAA') return { AAAA: [], ttl: 0 };
    served++;
    return { A: [served === 1 ? '93.184.216.34' : '169.254.169.254'], ttl: 0 };
  });
  const proxy = await startTestProxy({ policy: allowAll, dns: dns.address });
  t.teardown(async () => {
    await proxy.stop();
    await Promise.all([upstream.close(), trap.close(), dns.close()]);
  });

  const first = await rawRequest(proxy.port, getRequest(`http://rebind.test:${upstream.port}/`, `rebind.test:${upstream.port}`));
  t.equal(first.status, 200);
  t.same(
    upstream.connections.map((c) => c.localAddress),
    ['93.184.216.34'],
    'one connection, to the first answer',
  );
  t.same(
    dns
      .queriesFor('rebind.test')
      .map((q) => q.type)
      .sort(),
    ['A', 'AAAA'],
    'one A and one AAAA query for the call, none for the dial',
  );

  const second = await rawRequest(proxy.port, connectRequest(`rebind.test:${upstream.port}`));
  t.equal(second.status, 403, 'TTL 0 is not reused: the next call sees the rebound answer and refuses it');
  t.equal(JSON.parse(second.body).error.address_class, 'metadata');
  t.equal(trap.connections, 0, 'the metadata address was never dialled');
  t.equal(upstream.connections.length, 1);
  t.equal(dns.queriesFor('rebind.test').length, 4, 'two calls, two resolutions');
});

t.test('answers are cached for their TTL', async (t) => {
  const upstream = await startUpstream('93.184.216.35');
  const dns = await startDnsServer({ 'cached.test': { A: ['93.184.216.35'], ttl: 60 } });
  const proxy = await startTestProxy({ policy: allowAll, dns: dns.address });
  t.teardown(async () => {
    await proxy.stop();
    await Promise.all([upstream.close(), dns.close()]);
  });
  for (let i = 0; i < 3; i++) {
    const r = await rawRequest(proxy.port, getRequest(`http://cached.test:${upstream.port}/${i}`, `cached.test:${upstream.port}`));
    t.equal(r.status, 200);
  }
  t.equal(dns.queriesFor('cached.test').length, 2, 'resolved once (A + AAAA), then served from the cache');
});

t.test('a name refused by name causes no DNS query', async (t) => {
  const dns = await startDnsServer({});
  const proxy = await startTestProxy({
    policy: 'version: 1\nrules:\n  - {id: only-api, priority: 1, verdict: allow, egress: {allow: [api.example.com]}}\n',
    dns: dns.address,
  });
  t.teardown(async () => {
    await proxy.stop();
    await dns.close();
  });
  for (const host of ['c2VjcmV0.exfil.attacker.test', 'another.attacker.test']) {
    const r = await rawRequest(proxy.port, connectRequest(`${host}:443`));
    t.equal(r.status, 403);
    t.match(JSON.parse(r.body).error, { reason: 'default', rule: null });
  }
  t.same(dns.queries, [], 'the attacker-controlled names never reached DNS');
  const allowedName = await rawRequest(proxy.port, connectRequest('api.example.com:443'));
  t.equal(allowedName.status, 502, 'an allowed name is resolved (and here has no answer)');
  t.equal(JSON.parse(allowedName.body).error.code, 'dns_error');
  t.same(
    dns
      .queriesFor('api.example.com')
      .map((q) => q.type)
      .sort(),
    ['A', 'AAAA'],
  );
});

t.test('connect timeouts and unreachable upstreams', async (t) => {
  const proxy = await startTestProxy({
    policy: allowAll,
    config: 'baseline: {allow_cidrs: [203.0.113.9/32, 127.0.0.0/8]}\nlimits: {connect_timeout_ms: 300}',
  });
  t.teardown(() => proxy.stop());
  const closedPort = await startTrap('127.0.0.1', 0);
  await closedPort.close();
  for (const form of ['CONNECT', 'GET'] as const) {
    const slow = await rawRequest(
      proxy.port,
      form === 'CONNECT' ? connectRequest('203.0.113.9:80') : getRequest('http://203.0.113.9/', '203.0.113.9'),
    );
    t.equal(slow.status, 504, `${form}: connect timeout`);
    t.equal(JSON.parse(slow.body).error.code, 'upstream_timeout');
    const refused = await rawRequest(
      proxy.port,
      form === 'CONNECT'
        ? connectRequest(`127.0.0.1:${closedPort.port}`)
        : getRequest(`http://127.0.0.1:${closedPort.port}/`, `127.0.0.1:${closedPort.port}`),
    );
    t.equal(refused.status, 502, `${form}: refused connection`);
    t.equal(JSON.parse(refused.body).error.code, 'upstream_unreachable');
  }
  const failed = await proxy.waitForCount('egress.closed', 4);
  t.equal(failed.length, 4);
  t.ok(failed.every((e) => e.end === 'error' && e.bytes_up === 0));
});

t.test('a CONNECT client that leaves during the dial abandons it: the next candidate is never dialled', async (t) => {
  const trap = await startTrap('127.0.0.1', 0);
  const dns = await startDnsServer({ 'slow.test': { A: ['203.0.113.9', '127.0.0.1'] } });
  const proxy = await startTestProxy({
    policy: allowAll,
    dns: dns.address,
    config: 'baseline: {allow_cidrs: [203.0.113.9/32, 127.0.0.0/8]}\nlimits: {connect_timeout_ms: 400}',
  });
  t.teardown(async () => {
    await proxy.stop();
    await dns.close();
    await trap.close();
  });
  const { connect } = await import('node:net');
  const socket = connect({ host: '127.0.0.1', port: proxy.port });
  socket.on('error', () => {});
  await new Promise((r) => socket.on('connect', r));
  socket.write(connectRequest(`slow.test:${trap.port}`));
  await new Promise((r) => setTimeout(r, 150)); // the first candidate is still timing out
  socket.resetAndDestroy();
  const closed = await proxy.waitFor((e) => e.event === 'egress.closed');
  t.equal(closed.end, 'client_closed');
  await new Promise((r) => setTimeout(r, 300)); // past the first candidate's timeout
  t.equal(trap.connections, 0, 'the second candidate was not dialled for a client that is gone');
});

t.test('a name answering more than 32 addresses is a dns_error: no decision line of thousands of addresses, nothing dialled', async (t) => {
  const trap = await startTrap('93.184.216.34');
  const dns = await startDnsServer({
    'many.attacker.test': {
      A: Array.from({ length: 17 }, (_, i) => `93.184.216.${34 + i}`),
      AAAA: Array.from({ length: 16 }, (_, i) => `2606:4700::${i + 1}`),
      ttl: 30,
    },
  });
  const proxy = await startTestProxy({ policy: allowAll, dns: dns.address });
  t.teardown(async () => {
    await proxy.stop();
    await Promise.all([trap.close(), dns.close()]);
  });
  const r = await rawRequest(proxy.port, connectRequest(`many.attacker.test:${trap.port}`));
  t.equal(r.status, 502);
  t.match(JSON.parse(r.body).error, { code: 'dns_error', message: /too_many_addresses/ });
  const error = await proxy.waitFor((e) => e.event === 'egress.error');
  t.match(error, { code: 'dns_error', dns: 'too_many_addresses', host: 'many.attacker.test' });
  t.same(proxy.events('egress.decision'), [], 'no decision line');
  t.equal(trap.connections, 0, 'nothing dialled');
});
