/** The SSRF baseline table of interface.md, row by row, with embeddings and exemptions. */
import t from 'tap';
import { parseCidr } from '../../src/net/address.js';
import type { Cidr } from '../../src/net/address.js';
import { embeddedIpv4 } from '../../src/net/address.js';
import { classifyAddress, createBaseline } from '../../src/net/baseline.js';
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
