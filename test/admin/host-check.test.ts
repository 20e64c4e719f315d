/** The admin API's Host and Origin rules (host-check.ts), table-driven over listener kinds. */
import t from 'tap';
import { checkFetchSite, createHostCheck, parseAuthority } from '../../src/admin/host-check.js';

const local = () => new Set(['127.0.0.1', '::1', '10.0.0.7', 'fd00::7']);
const check = (address: string, port: number, allowedHosts: string[] = []) =>
  createHostCheck({ listener: () => ({ address, port }), allowedHosts, localAddresses: local });

t.test('Host: the listener itself, localhost on loopback, allowed names; 421 otherwise', async (t) => {
  const cases: Array<[listener: [string, number], host: string | undefined, ok: boolean, why: string]> = [
    [['127.0.0.1', 9901], '127.0.0.1:9901', true, 'its address and port'],
    [['127.0.0.1', 9901], 'localhost:9901', true, 'localhost on loopback'],
    [['127.0.0.1', 9901], 'LOCALHOST.:9901', true, 'localhost, any case, root dot'],
    [['127.0.0.1', 9901], '0x7f.1:9901', true, 'another spelling of its address'],
    [['127.0.0.1', 9901], '127.0.0.1:9902', false, 'another port'],
    [['127.0.0.1', 9901], '127.0.0.1', false, 'no port is port 80'],
    [['127.0.0.1', 80], '127.0.0.1', true, 'no port on port 80'],
    [['127.0.0.1', 9901], '127.0.0.2:9901', false, 'another loopback address'],
    [['127.0.0.1', 9901], 'evil.example:9901', false, 'DNS rebinding'],
    [['127.0.0.1', 9901], 'localhost.evil.example:9901', false, 'a name that starts with localhost'],
    [['127.0.0.1', 9901], '[::1]:9901', false, 'IPv6 loopback is another address'],
    [['127.0.0.1', 9901], undefined, false, 'no Host at all'],
    [['127.0.0.1', 9901], '', false, 'an empty Host'],
    [['127.0.0.1', 9901], '127.0.0.1:9901:9901', false, 'two ports'],
    [['127.0.0.1', 9901], '127.0.0.1:99999', false, 'port out of range'],
    [['127.0.0.1', 9901], 'user@127.0.0.1:9901', false, 'userinfo'],
    [['::1', 9901], '[::1]:9901', true, 'IPv6 loopback, bracketed'],
    [['::1', 9901], '[0:0:0:0:0:0:0:1]:9901', true, 'IPv6 loopback, long form'],
    [['::1', 9901], 'localhost:9901', true, 'localhost on IPv6 loopback'],
    [['::1', 9901], '::1:9901', false, 'unbracketed IPv6 with a port'],
    [['10.0.0.7', 9901], '10.0.0.7:9901', true, 'a non-loopback listener: its address'],
    [['10.0.0.7', 9901], 'localhost:9901', false, 'not on loopback: no localhost'],
    [['0.0.0.0', 9901], '10.0.0.7:9901', true, 'wildcard: an interface address (a kubelet probe to the pod IP)'],
    [['0.0.0.0', 9901], '127.0.0.9:9901', true, 'wildcard: any loopback address'],
    [['0.0.0.0', 9901], 'localhost:9901', true, 'wildcard: localhost'],
    [['0.0.0.0', 9901], '10.0.0.8:9901', false, 'wildcard: not an address of this host'],
    [['::', 9901], '[fd00::7]:9901', true, 'IPv6 wildcard: an interface address'],
    [['0.0.0.0', 9901], 'evil.example:9901', false, 'wildcard: DNS rebinding'],
  ];
  for (const [[address, port], host, ok, why] of cases) {
    const verdict = check(address, port)(host, undefined);
    t.equal(verdict.ok, ok, `${address}:${port} Host ${JSON.stringify(host)}: ${why}`);
    if (!verdict.ok) t.match(verdict, { status: 421, code: 'misdirected_request' });
  }
  const listed = check('127.0.0.1', 9901, ['egress-admin.internal']);
  t.ok(listed('egress-admin.internal:9901', undefined).ok, 'an allowed name');
  t.ok(listed('Egress-Admin.Internal', undefined).ok, 'an allowed name, any case, any port (a reverse proxy in front)');
  t.notOk(listed('x.egress-admin.internal:9901', undefined).ok, 'not its subdomains');
  t.notOk(createHostCheck({ listener: () => null, allowedHosts: [] })('127.0.0.1:9901', undefined).ok, 'before listen, nothing');
});

t.test('Origin: none, or the same authority as Host; 403 otherwise', async (t) => {
  const c = check('127.0.0.1', 9901, ['egress-admin.internal']);
  const cases: Array<[host: string, origin: string | undefined, ok: boolean, why: string]> = [
    ['127.0.0.1:9901', undefined, true, 'no Origin: curl, scripts, probes'],
    ['127.0.0.1:9901', 'http://127.0.0.1:9901', true, 'its own console'],
    ['localhost:9901', 'http://localhost:9901', true, 'its own console by localhost'],
    ['127.0.0.1:9901', 'http://localhost:9901', false, 'another origin, even if it is the same listener'],
    ['127.0.0.1:9901', 'http://evil.example', false, 'a cross-site page'],
    ['127.0.0.1:9901', 'http://evil.example:9901', false, 'a rebinding page that kept the Host honest'],
    ['127.0.0.1:9901', 'http://127.0.0.1:8080', false, 'another port on the same host'],
    ['127.0.0.1:9901', 'null', false, 'an opaque origin (sandboxed frame, file://)'],
    ['127.0.0.1:9901', '', false, 'an empty Origin'],
    ['127.0.0.1:9901', 'ftp://127.0.0.1:9901', false, 'another scheme'],
    ['127.0.0.1:9901', 'http://127.0.0.1:9901/path', false, 'not an origin'],
    ['egress-admin.internal', 'https://egress-admin.internal', true, 'behind a TLS front: default ports'],
    ['egress-admin.internal', 'https://egress-admin.internal:8443', false, 'a non-default port the Host did not name'],
  ];
  for (const [host, origin, ok, why] of cases) {
    const verdict = c(host, origin);
    t.equal(verdict.ok, ok, `Host ${host} Origin ${JSON.stringify(origin)}: ${why}`);
    if (!verdict.ok) t.match(verdict, { status: 403, code: 'forbidden_origin' });
  }
});

t.test('parseAuthority', async (t) => {
  t.match(parseAuthority('[::1]:80'), { host: '::1', kind: 'ip', loopback: true, port: 80 });
  t.match(parseAuthority('Example.COM'), { host: 'example.com', kind: 'name', loopback: false, port: null });
  t.equal(parseAuthority('a.example:0'), null);
  t.equal(parseAuthority('[nope]:1'), null);
  t.equal(parseAuthority('a%2e.example'), null);
});

t.test("Sec-Fetch-Site: the console's own requests, typed URLs and non-browsers pass; another site's page does not", async (t) => {
  for (const [value, ok] of [
    [undefined, true],
    ['same-origin', true],
    ['none', true],
    ['same-site', false],
    ['cross-site', false],
    ['garbage', false],
  ] as const) {
    const verdict = checkFetchSite(value);
    t.equal(verdict.ok, ok, String(value));
    if (!verdict.ok) t.match(verdict, { status: 403, code: 'forbidden_origin' });
  }
});
