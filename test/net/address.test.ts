/** Host canonicalisation: every spelling of an address means that address; odd hosts are refused. */
import t from 'tap';
import { canonicalHost, formatHostPort, ipv6FromHex, parseCidr, parseIpLiteral } from '../../src/net/address.js';

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
