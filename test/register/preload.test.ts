/** The preload routes an unmodified program's fetch, http and https through the proxy. */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import t from 'tap';
import { bypassesProxy } from '../../src/register/no-proxy.js';
import { startDnsServer } from '../helpers/dns-server.js';
import { startTestProxy } from '../helpers/proxy.js';
import { CA_PATH, startUpstream } from '../helpers/upstream.js';

const run = promisify(execFile);
const REGISTER = new URL('../../dist/src/register/index.js', import.meta.url).pathname;
const CLIENT = new URL('../fixtures/preload-client.mjs', import.meta.url).pathname;

t.test('fetch, http.get and https.get go through the proxy; NO_PROXY goes direct', async (t) => {
  const plain = await startUpstream();
  const tls = await startUpstream('127.0.0.1', { tls: true });
  const direct = await startUpstream();
  const dns = await startDnsServer({ 'pinned.test': { A: ['127.0.0.1'] } });
  const proxy = await startTestProxy({
    policy: `version: 1
rules:
  - {id: allow-pinned, priority: 1, verdict: allow, egress: {allow: [pinned.test]}}
`,
    dns: dns.address,
  });
  t.teardown(async () => {
    await proxy.stop();
    await Promise.all([plain.close(), tls.close(), direct.close(), dns.close()]);
  });
  const { stdout, stderr } = await run(process.execPath, ['--import', REGISTER, CLIENT, `http://pinned.test:${plain.port}/p`, `https://pinned.test:${tls.port}/t`, `http://denied.test:${plain.port}/d`, `http://127.0.0.1:${direct.port}/direct`], {
    env: { ...process.env, HTTPS_PROXY: proxy.url, HTTP_PROXY: proxy.url, NO_PROXY: `127.0.0.1:${direct.port}`, NODE_EXTRA_CA_CERTS: CA_PATH },
  });
  const out = JSON.parse(stdout);
  t.match(stderr, /^mcp-egress-proxy\/register: fetch, http and https routed through http:\/\/127\.0\.0\.1:\d+ \(https\)/m, 'says once what it routed');
  t.equal(out.fetchPlain.status, 200, 'fetch http://');
  t.equal(out.fetchTls.status, 200, 'fetch https:// (CONNECT)');
  t.equal(out.httpGet.status, 200, 'http.get');
  t.equal(out.httpsGet.status, 200, 'https.get');
  t.equal(out.fetchDenied.status, 403, 'a plain-HTTP refusal reaches fetch as the proxy answer');
  t.match(JSON.parse(out.fetchDenied.body), { error: { code: 'firewall_blocked' } });
  t.equal(out.httpDenied.status, 403);
  t.equal(out.direct.status, 200);
  t.equal(out.directHttp.status, 200);
  t.equal(direct.requests.length, 2, 'NO_PROXY destinations are reached directly');
  const decisions = proxy.events('egress.decision');
  t.same(decisions.map((d) => [d.method, d.host, d.dispatched]), [
    ['GET', 'pinned.test', true],
    ['CONNECT', 'pinned.test', true],
    ['GET', 'denied.test', false],
    ['GET', 'pinned.test', true],
    ['CONNECT', 'pinned.test', true],
    ['GET', 'denied.test', false],
  ]);
  t.notOk(decisions.some((d) => d.port === direct.port), 'the proxy never saw the NO_PROXY destination');
  t.ok(decisions.every((d) => d.tool === null), 'outside a tool call nothing is attributed');
});

t.test('a proxy URL it cannot parse stops the program', async (t) => {
  for (const bad of ['::not a url', 'socks5://127.0.0.1:1080']) {
    const r = await run(process.execPath, ['--import', REGISTER, '-e', 'console.log("ran")'], { env: { ...process.env, HTTPS_PROXY: bad } }).catch((e: { code: number; stdout: string; stderr: string }) => e);
    t.equal((r as { code: number }).code, 78, bad);
    t.match(r.stderr, /refusing to start/);
    t.notMatch(r.stdout, /ran/);
  }
  const none = await run(process.execPath, ['--import', REGISTER, '-e', 'console.log("ran")'], { env: { ...process.env, HTTPS_PROXY: '', HTTP_PROXY: '', https_proxy: '', http_proxy: '' } });
  t.match(none.stderr, /nothing is routed/);
  t.match(none.stdout, /ran/);
});

t.test('NO_PROXY matching', async (t) => {
  t.ok(bypassesProxy('*', 'a.example', 443));
  t.ok(bypassesProxy('example.com', 'example.com', 443));
  t.ok(bypassesProxy('example.com', 'api.example.com', 443));
  t.ok(bypassesProxy('.example.com', 'api.example.com', 443));
  t.notOk(bypassesProxy('example.com', 'badexample.com', 443));
  t.ok(bypassesProxy('localhost,127.0.0.1:8080', '127.0.0.1', 8080));
  t.notOk(bypassesProxy('127.0.0.1:8080', '127.0.0.1', 9090));
  t.ok(bypassesProxy('[::1]', '[::1]', 80));
  t.ok(bypassesProxy('::1', '::1', 80), 'bare IPv6');
  t.ok(bypassesProxy('[::1]:80', '::1', 80));
  t.notOk(bypassesProxy('[::1]:81', '::1', 80));
  t.notOk(bypassesProxy('', 'a', 1));
  t.notOk(bypassesProxy(undefined, 'a', 1));
});
