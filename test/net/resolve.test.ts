/** The resolver against a real UDP DNS server on loopback. */
import t from 'tap';
import { DnsError, MAX_ADDRESSES, createResolver, staticResolver } from '../../src/net/resolve.js';
import { startDnsServer } from '../helpers/dns-server.js';
import { ip } from '../helpers/policy.js';

t.test('resolver', async (t) => {
  const dns = await startDnsServer({
    'both.test': { A: ['93.184.216.34', '93.184.216.34'], AAAA: ['2606:4700::1111', '::ffff:93.184.216.34'], ttl: 30 },
    'v4.test': { A: ['93.184.216.34'], ttl: 0 },
    'short.test': { A: ['93.184.216.34'], ttl: 1 },
    'long.test': { A: ['93.184.216.34'], ttl: 86400 },
    'fail.test': { rcode: 'SERVFAIL' },
    'slow.test': { silent: true },
    'empty.test': { A: [], AAAA: [] },
    // 17 + 16 distinct: one over the bound (each answer fits a 512-byte UDP reply).
    'many.test': {
      A: Array.from({ length: 17 }, (_, i) => `93.184.216.${i + 1}`),
      AAAA: Array.from({ length: 16 }, (_, i) => `2606:4700::${i + 1}`),
      ttl: 30,
    },
    'bound.test': {
      A: Array.from({ length: 16 }, (_, i) => `93.184.216.${i + 1}`),
      AAAA: Array.from({ length: 16 }, (_, i) => `2606:4700::${i + 1}`),
      ttl: 30,
    },
  });
  t.teardown(() => dns.close());
  let now = 1_000_000;
  const resolver = createResolver({ servers: [dns.address], timeoutMs: 400, maxTtlSeconds: 60, now: () => now });

  const both = await resolver.resolve('both.test');
  t.same(
    both.addresses.map((a) => a.text),
    ['93.184.216.34', '2606:4700::1111'],
    'A then AAAA, mapped folded into IPv4, duplicates dropped',
  );
  t.equal(both.cached, false);
  t.equal((await resolver.resolve('both.test')).cached, true, 'cached within its TTL');
  now += 31_000;
  t.equal((await resolver.resolve('both.test')).cached, false, 'expired after its TTL');

  await resolver.resolve('v4.test');
  t.equal((await resolver.resolve('v4.test')).cached, false, 'TTL 0 is never cached');
  t.equal(dns.queriesFor('v4.test').length, 4);

  await resolver.resolve('long.test');
  now += 61_000;
  t.equal((await resolver.resolve('long.test')).cached, false, 'the ceiling caps a long TTL');

  for (const [name, kind] of [
    ['nx.test', 'nxdomain'],
    ['fail.test', 'servfail'],
    ['slow.test', 'timeout'],
    ['empty.test', 'no_data'],
    ['many.test', 'too_many_addresses'],
  ] as const) {
    const err = await resolver.resolve(name).catch((e: unknown) => e);
    t.ok(err instanceof DnsError, `${name} fails`);
    t.equal((err as DnsError).kind, kind, `${name}: ${kind}`);
  }
  t.same(
    dns.queries
      .filter((q) => q.name === 'fail.test')
      .map((q) => q.type)
      .sort(),
    ['A', 'AAAA'],
    'A and AAAA asked, once each',
  );

  t.equal((await resolver.resolve('bound.test')).addresses.length, MAX_ADDRESSES, 'at the bound: served');
  t.equal(
    await resolver.resolve('many.test').catch((e: Error) => e.message),
    'DNS too_many_addresses for many.test: 33 addresses (at most 32)',
  );

  const small = createResolver({ servers: [dns.address], cacheSize: 1, now: () => now });
  await small.resolve('both.test');
  await small.resolve('short.test');
  t.equal((await small.resolve('both.test')).cached, false, 'the cache is bounded');

  const table = staticResolver(new Map([['a.test', [ip('1.2.3.4')]]]));
  t.same(
    (await table.resolve('a.test')).addresses.map((a) => a.text),
    ['1.2.3.4'],
  );
  t.equal(((await table.resolve('b.test').catch((e: unknown) => e)) as DnsError).kind, 'nxdomain');
});
