/** Host canonicalisation: every spelling of an address means that address; odd hosts are refused. */
import t from 'tap';
import {
  carriedBlock,
  cidrsOverlap,
  canonicalHost,
  formatHostPort,
  ipv6FromHex,
  parseCidr,
  parseIpLiteral,
} from '../../src/net/address.js';
import type { Cidr } from '../../src/net/address.js';

const same: Array<[string, string, 'ip' | 'name']> = [
  ['2852039166', '169.254.169.254', 'ip'],
  ['0xA9FEA9FE', '169.254.169.254', 'ip'],
  ['0xa9fea9fe', '169.254.169.254', 'ip'],
  ['0251.0376.0251.0376', '169.254.169.254', 'ip'],
  ['169.254.43518', '169.254.169.254', 'ip'],
  ['169.16689662', '169.254.169.254', 'ip'],
  ['127.1', '127.0.0.1', 'ip'],
  ['0x7f.1', '127.0.0.1', 'ip'],
  ['127.0.0.1.', '127.0.0.1', 'ip'],
  ['010.0.0.1', '8.0.0.1', 'ip'],
  ['１２７.０.０.１', '127.0.0.1', 'ip'],
  ['0x', '0.0.0.0', 'ip'],
  ['[::ffff:169.254.169.254]', '169.254.169.254', 'ip'],
  ['::ffff:a9fe:a9fe', '169.254.169.254', 'ip'],
  ['[0:0:0:0:0:ffff:7f00:1]', '127.0.0.1', 'ip'],
  ['[2001:DB8::1]', '2001:db8::1', 'ip'],
  ['[::10.1.2.3]', '::a01:203', 'ip'],
  ['[::ffff:10.1.2.3]', '10.1.2.3', 'ip'],
  ['[64:ff9b::169.254.169.254]', '64:ff9b::a9fe:a9fe', 'ip'],
  ['[::1]', '::1', 'ip'],
  ['[fd00:ec2::254]', 'fd00:ec2::254', 'ip'],
  ['API.OpenAI.com.', 'api.openai.com', 'name'],
  ['bücher.example', 'xn--bcher-kva.example', 'name'],
  ['MÜNCHEN.de', 'xn--mnchen-3ya.de', 'name'],
  ['under_score.example', 'under_score.example', 'name'],
  ['-dash.example', '-dash.example', 'name'],
  ['localhost', 'localhost', 'name'],
];
for (const [raw, host, kind] of same) {
  t.test(`canonicalHost(${JSON.stringify(raw)})`, async (t) => {
    const r = canonicalHost(raw);
    t.equal(r.kind, kind);
    if (r.kind !== 'error') t.equal(r.host, host);
  });
}

const refused = [
  '',
  '.',
  'a..b',
  'evil.com\u0000.ok.com',
  'evil.com\r\nx',
  'a b.com',
  'a\tb.com',
  'fe80::1%eth0',
  '[fe80::1%25eth0]',
  'a%2fb.com',
  'a/b',
  'a／b.com',
  'a?b',
  'a#b',
  'a@b',
  '[::1',
  '[1.2.3.4]',
  '1.2.3.4.5',
  '256.1.1.1',
  '4294967296',
  '08.0.0.1',
  'foo.123',
  'foo.0x1',
  `${'a'.repeat(64)}.com`,
  `${'a.'.repeat(127)}com`,
  'x'.repeat(2000),
  '::gg',
];
for (const raw of refused) {
  t.test(`canonicalHost refuses ${JSON.stringify(raw.slice(0, 40))}`, async (t) => {
    t.equal(canonicalHost(raw).kind, 'error');
  });
}

t.test('strict IP literals (resolver answers, CIDR addresses)', async (t) => {
  t.equal(parseIpLiteral('1.2.3.4')?.text, '1.2.3.4');
  t.equal(parseIpLiteral('127.1'), null, 'only dotted quads');
  t.equal(parseIpLiteral('::ffff:1.2.3.4')?.text, '1.2.3.4', 'mapped becomes IPv4');
  t.equal(parseIpLiteral('fe80::1%lo'), null);
  t.equal(parseIpLiteral('nonsense'), null);
  t.equal(ipv6FromHex('20010db8000000000000000000000001').text, '2001:db8::1');
  t.equal(ipv6FromHex('00000000000000000000ffff01020304').text, '1.2.3.4');
});

t.test('CIDRs', async (t) => {
  const ok: Array<[string, string]> = [
    ['10.0.0.0/8', '10.0.0.0/8'],
    ['0.0.0.0/0', '0.0.0.0/0'],
    ['1.2.3.4/32', '1.2.3.4/32'],
    ['2001:DB8::/32', '2001:db8::/32'],
    ['::/0', '::/0'],
    ['2600:1:2::/47', '2600:1:2::/47'],
    ['::ffff:10.0.0.0/104', '10.0.0.0/8'],
    ['::ffff:0:0/96', '0.0.0.0/0'],
  ];
  for (const [text, canonical] of ok) {
    const c = parseCidr(text);
    t.equal('error' in c ? c.error : c.text, canonical, text);
  }
  for (const bad of ['10.0.0.1/8', '2600:1:3::/47', '10.0.0.0/33', '::/129', '10.0.0.0/08', '10.0.0.0/', 'x/8', '127.1/8', '::1%lo/128']) {
    t.ok('error' in parseCidr(bad), `${bad} refused`);
  }
});

t.test('formatHostPort brackets IPv6', async (t) => {
  t.equal(formatHostPort('::1', 443), '[::1]:443');
  t.equal(formatHostPort('a.example', 80), 'a.example:80');
});

t.test('carriedBlock: the IPv4 block an IPv6 block spells', async (t) => {
  const rows: Array<[string, string | null]> = [
    ['64:ff9b::/96', 'NAT64 0.0.0.0/0'],
    ['64:ff9b::5db8:d800/120', 'NAT64 93.184.216.0/24'],
    ['64:ff9b::a9fe:a9fe/128', 'NAT64 169.254.169.254/32'],
    ['64:ff9b::/95', null],
    ['64:ff9b:1::/48', null],
    ['::/96', 'IPv4-compatible 0.0.0.0/0'],
    ['::a00:0/104', 'IPv4-compatible 10.0.0.0/8'],
    ['::/127', null],
    ['::2/127', 'IPv4-compatible 0.0.0.2/31'],
    ['::5db8:d822/128', 'IPv4-compatible 93.184.216.34/32'],
    ['::1/128', null],
    ['::/128', null],
    ['::/0', null],
    ['2002::/16', '6to4 0.0.0.0/0'],
    ['2002:a00::/24', '6to4 10.0.0.0/8'],
    ['2002:a01:203::/48', '6to4 10.1.2.3/32'],
    ['2002:a01:203:4::/64', '6to4 10.1.2.3/32'],
    ['2000::/3', null],
    ['2002::/15', null],
    ['10.0.0.0/8', null],
    ['::ffff:10.0.0.0/104', null],
  ];
  for (const [text, expected] of rows) {
    const carried = carriedBlock(parseCidr(text) as Cidr);
    t.equal(carried ? `${carried.form} ${carried.ipv4}` : null, expected, text);
  }
});

t.test('cidrsOverlap', async (t) => {
  const c = (s: string) => parseCidr(s) as Cidr;
  t.ok(cidrsOverlap(c('10.0.0.0/8'), c('10.1.0.0/16')));
  t.ok(cidrsOverlap(c('10.1.0.0/16'), c('10.0.0.0/8')));
  t.notOk(cidrsOverlap(c('10.0.0.0/8'), c('11.0.0.0/8')));
  t.ok(cidrsOverlap(c('0.0.0.0/0'), c('255.255.255.255/32')));
  t.notOk(cidrsOverlap(c('0.0.0.0/0'), c('::/0')), 'families never overlap');
  t.ok(cidrsOverlap(c('2002::/16'), c('2002:a9fe:a9fe::/48')));
  t.ok(cidrsOverlap(c('2002:a9fe:a9fe:1::/64'), c('2002:a9fe:a9fe::/48')));
  t.notOk(cidrsOverlap(c('2002:a9fe:a9ff::/48'), c('2002:a9fe:a9fe::/48')));
  t.ok(cidrsOverlap(c('::/64'), c('::fffe:0:0/95')));
  t.notOk(cidrsOverlap(c('::fffe:0:0/95'), c('::ffff:0:0/112')), 'an IPv4-mapped block is IPv4');
});
