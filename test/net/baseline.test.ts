/** The SSRF baseline table of interface.md, row by row, with embeddings and exemptions. */
import t from 'tap';
import { parseCidr } from '../../src/net/address.js';
import type { Cidr } from '../../src/net/address.js';
import { embeddedIpv4 } from '../../src/net/address.js';
import { classifyAddress, createBaseline, metadataOverlaps } from '../../src/net/baseline.js';
import { ip } from '../helpers/policy.js';

const rows: Array<[string, string | null]> = [
  ['169.254.169.254', 'metadata'],
  ['169.254.170.2', 'metadata'],
  ['100.100.100.200', 'metadata'],
  ['168.63.129.16', 'metadata'],
  ['192.0.0.192', 'metadata'],
  ['fd00:ec2::254', 'metadata'],
  ['127.0.0.1', 'loopback'],
  ['127.255.255.254', 'loopback'],
  ['::1', 'loopback'],
  ['0.0.0.0', 'unspecified'],
  ['0.1.2.3', 'unspecified'],
  ['::', 'unspecified'],
  ['10.1.2.3', 'private'],
  ['172.16.0.1', 'private'],
  ['172.31.255.255', 'private'],
  ['192.168.1.1', 'private'],
  ['100.64.0.1', 'shared'],
  ['100.127.255.255', 'shared'],
  ['169.254.1.1', 'link_local'],
  ['fe80::1', 'link_local'],
  ['febf::1', 'link_local'],
  ['fc00::1', 'unique_local'],
  ['fd12:3456::1', 'unique_local'],
  ['224.0.0.1', 'multicast'],
  ['239.255.255.255', 'multicast'],
  ['ff02::1', 'multicast'],
  ['255.255.255.255', 'broadcast'],
  ['192.0.0.1', 'reserved'],
  ['192.0.2.1', 'reserved'],
  ['198.18.0.1', 'reserved'],
  ['198.19.255.255', 'reserved'],
  ['198.51.100.7', 'reserved'],
  ['203.0.113.9', 'reserved'],
  ['240.0.0.1', 'reserved'],
  ['2001:db8::1', 'reserved'],
  ['100::1', 'reserved'],
  ['2001::1', 'reserved'],
  ['2001:0:4136:e378:8000:63bf:3fff:fdd2', 'reserved'],
  ['64:ff9b:1::1', 'reserved'],
  ['4000::1', 'reserved'],
  ['::ffff:0:1.2.3.4', 'reserved'],
  // IPv6 that carries IPv4: judged by the IPv4.
  ['::ffff:10.1.2.3', 'private'],
  ['::10.1.2.3', 'private'],
  ['::a9fe:a9fe', 'metadata'],
  ['64:ff9b::10.1.2.3', 'private'],
  ['64:ff9b::a9fe:a9fe', 'metadata'],
  ['64:ff9b::93.184.216.34', null],
  ['2002:a9fe:a9fe::1', 'metadata'],
  ['2002:0a01:0203::', 'private'],
  ['2002:5db8:d822::1', null],
  ['::8.8.8.8', null],
  // Public.
  ['93.184.216.34', null],
  ['8.8.8.8', null],
  ['172.32.0.1', null],
  ['100.128.0.1', null],
  ['2606:4700::1111', null],
  ['2a00:1450::1', null],
];
for (const [address, expected] of rows) {
  t.test(`${address} is ${expected ?? 'public'}`, async (t) => {
    t.equal(classifyAddress(ip(address)), expected);
  });
}

t.test('embedded IPv4', async (t) => {
  t.equal(embeddedIpv4(ip('::1')), null, '::1 is itself');
  t.equal(embeddedIpv4(ip('::')), null, ':: is itself');
  t.equal(embeddedIpv4(ip('1.2.3.4')), null);
  t.equal(embeddedIpv4(ip('2606:4700::1111')), null);
  t.equal(embeddedIpv4(ip('::0.0.0.2'))?.text, '0.0.0.2');
});

t.test('exemptions and self', async (t) => {
  const cidr = (s: string) => parseCidr(s) as Cidr;
  const baseline = createBaseline({
    allowCidrs: [cidr('10.1.0.0/16'), cidr('169.254.169.254/32')],
    isSelf: (a, port) => a.text === '10.1.2.3' && port === 3128,
  });
  t.equal(baseline(ip('10.1.2.3'), 80), null, 'exempted by allow_cidrs');
  t.equal(baseline(ip('64:ff9b::10.1.2.3'), 80), null, 'an embedded form of an exempt address');
  t.equal(baseline(ip('10.2.0.1'), 80), 'private', 'outside the exemption');
  t.equal(baseline(ip('169.254.169.254'), 80), null, 'metadata only when named');
  t.equal(baseline(ip('169.254.170.2'), 80), 'metadata');
  t.equal(baseline(ip('10.1.2.3'), 3128), 'self', 'self cannot be exempted');
  t.equal(baseline(ip('93.184.216.34'), 443), null);
  t.equal(createBaseline()(ip('127.0.0.1'), 1), 'loopback', 'no options');
});

t.test('metadata is exempted only by an entry that is exactly that address', async (t) => {
  const cidr = (s: string) => parseCidr(s) as Cidr;
  const rows: Array<[string[], string, string | null, string]> = [
    // [allow_cidrs, destination, class, why]
    [['169.254.0.0/16'], '169.254.169.254', 'metadata', 'a link-local range written for a node-local DNS cache'],
    [['169.254.0.0/16'], '169.254.170.2', 'metadata', 'ECS task metadata too'],
    [['169.254.0.0/16'], '169.254.20.10', null, 'the range still exempts what it was written for'],
    [['169.254.0.0/16'], '[64:ff9b::169.254.169.254]', 'metadata', 'NAT64 spelling under the IPv4 range'],
    [['169.254.0.0/16'], '[2002:a9fe:a9fe::]', 'metadata', '6to4 spelling under the IPv4 range'],
    [['169.254.0.0/16'], '[::169.254.169.254]', 'metadata', 'IPv4-compatible spelling under the IPv4 range'],
    [['169.254.169.0/24'], '169.254.169.254', 'metadata', 'a /24'],
    [['169.254.169.254/31'], '169.254.169.254', 'metadata', 'a /31 is not exact'],
    [['0.0.0.0/0'], '100.100.100.200', 'metadata', 'everything IPv4'],
    [['0.0.0.0/0'], '10.1.2.3', null, 'everything IPv4 exempts private'],
    [['fd00::/8'], '[fd00:ec2::254]', 'metadata', 'a ULA range'],
    [['fd00::/8'], '[fd00:1::1]', null, 'the ULA range still exempts ULA'],
    [['::/0'], '[fd00:ec2::254]', 'metadata', 'everything IPv6'],
    [['64:ff9b::/96'], '[64:ff9b::169.254.169.254]', 'metadata', 'the whole NAT64 range'],
    [['64:ff9b::/96'], '[64:ff9b::10.1.2.3]', null, 'the NAT64 range exempts what it names otherwise'],
    [['2002::/16'], '[2002:a9fe:a9fe::1]', 'metadata', 'the whole 6to4 range'],
    [['169.254.169.254/32'], '169.254.169.254', null, 'exact /32'],
    [['169.254.169.254/32'], '[64:ff9b::169.254.169.254]', null, 'exact /32 covers the spellings of that address'],
    [['169.254.169.254/32'], '169.254.170.2', 'metadata', 'exact names one address only'],
    [['::ffff:169.254.169.254/128'], '169.254.169.254', null, 'an IPv4-mapped /128 is the IPv4 /32'],
    [['64:ff9b::a9fe:a9fe/128'], '[64:ff9b::169.254.169.254]', null, 'an exact NAT64 spelling exempts that spelling'],
    [['64:ff9b::a9fe:a9fe/128'], '169.254.169.254', 'metadata', 'but not the IPv4 address'],
    [['fd00:ec2::254/128'], '[fd00:ec2::254]', null, 'exact /128'],
    [['fd00:ec2::254/128', '169.254.0.0/16'], '169.254.169.254', 'metadata', 'one exact entry does not open another metadata address'],
  ];
  for (const [allow, destination, expected, why] of rows) {
    const baseline = createBaseline({ allowCidrs: allow.map(cidr) });
    t.equal(baseline(ip(destination.replace(/^\[|\]$/g, '')), 80), expected, `${allow.join(',')} vs ${destination}: ${why}`);
  }
});

t.test('broad exemptions that cover metadata are named for the start-up warning', async (t) => {
  const cidr = (s: string) => parseCidr(s) as Cidr;
  const overlaps = (...entries: string[]) => metadataOverlaps(entries.map(cidr));
  t.same(overlaps('169.254.0.0/16'), [{ entry: '169.254.0.0/16', metadata: ['169.254.169.254', '169.254.170.2'] }]);
  t.same(overlaps('100.64.0.0/10'), [{ entry: '100.64.0.0/10', metadata: ['100.100.100.200'] }]);
  t.same(overlaps('fd00::/8'), [{ entry: 'fd00::/8', metadata: ['fd00:ec2::254'] }]);
  t.same(
    overlaps('64:ff9b::/96').map((o) => o.metadata.length),
    [5],
    'NAT64 spellings of the five IPv4 metadata addresses',
  );
  t.same(overlaps('2002:a9fe::/32'), [{ entry: '2002:a9fe::/32', metadata: ['169.254.169.254', '169.254.170.2'] }], '6to4 spellings');
  t.same(
    overlaps('2002:a9fe:a9fe:1::/64'),
    [{ entry: '2002:a9fe:a9fe:1::/64', metadata: ['169.254.169.254'] }],
    'a block inside one 6to4 /48',
  );
  t.same(
    overlaps('169.254.169.254/32', 'fd00:ec2::254/128', '10.0.0.0/8', '127.0.0.0/8', '::1/128', '2606:4700::/32'),
    [],
    'exact entries and ranges away from metadata are not named',
  );
});

t.test('an address that carries IPv4 is exempt through that IPv4, or by a block that spells IPv4', async (t) => {
  const cidr = (s: string) => parseCidr(s) as Cidr;
  const rows: Array<[string, string, string | null]> = [
    // [allow_cidrs entry, destination, class]
    ['10.0.0.0/8', '64:ff9b::a01:203', null],
    ['10.0.0.0/8', '2002:a01:203::1', null],
    ['64:ff9b::/96', '64:ff9b::a01:203', null],
    ['64:ff9b::a01:203/128', '64:ff9b::a01:203', null],
    ['64:ff9b::a01:203/128', '64:ff9b::a01:204', 'private'],
    ['2002:a01:203::/48', '2002:a01:203::1', null],
    ['::a00:0/104', '::a01:203', null],
    ['::/0', '64:ff9b::a01:203', 'private'],
    ['::/0', '2002:7f00:1::', 'loopback'],
    ['::/0', '::a01:203', 'private'],
    ['::/0', 'fe80::1', null],
    ['::/0', '::1', null],
    ['2000::/3', '2002:a01:203::1', 'private'],
    ['2000::/3', '2001:db8::1', null],
    ['2002::/15', '2002:a01:203::1', 'private'],
    ['::/64', '::a01:203', 'private'],
  ];
  for (const [entry, destination, expected] of rows) {
    t.equal(createBaseline({ allowCidrs: [cidr(entry)] })(ip(destination), 80), expected, `${entry} vs ${destination}`);
  }
});
