/** The preload routes an unmodified program's fetch, http and https through the proxy. */
import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { bypassesProxy } from '../../src/register/no-proxy.js';
import { startDnsServer } from '../helpers/dns-server.js';
import { startTestProxy } from '../helpers/proxy.js';
import { CA_PATH, startUpstream } from '../helpers/upstream.js';

const run = promisify(execFile);
const REGISTER = new URL('../../dist/src/register/index.js', import.meta.url).pathname;
const CLIENT = new URL('../fixtures/preload-client.mjs', import.meta.url).pathname;

t.test('fetch, http.get and https.get go through the proxy; NO_PROXY goes direct; refusals name themselves', async (t) => {
  const plain = await startUpstream();
  const tls = await startUpstream('127.0.0.1', { tls: true });
  const direct = await startUpstream();
  const dns = await startDnsServer({ 'pinned.test': { A: ['127.0.0.1'] }, 'denied.test': { A: ['127.0.0.1'] } });
  const proxy = await startTestProxy({
    policy: `version: 1
rules:
  - {id: allow-pinned, priority: 1, verdict: allow, egress: {allow: [pinned.test]}}
  - {id: no-denied-tls, priority: 2, verdict: deny, ports: [${tls.port}], egress: {deny: [denied.test]}}
`,
    dns: dns.address,
  });
  t.teardown(async () => {
    await proxy.stop();
    await Promise.all([plain.close(), tls.close(), direct.close(), dns.close()]);
  });
  const { stdout, stderr } = await run(
    process.execPath,
    [
      '--import',
      REGISTER,
      CLIENT,
      `http://pinned.test:${plain.port}/p`,
      `https://pinned.test:${tls.port}/t`,
      `http://denied.test:${plain.port}/d`,
      `http://127.0.0.1:${direct.port}/direct`,
      `https://denied.test:${tls.port}/td`,
    ],
    {
      env: {
        ...process.env,
        HTTPS_PROXY: proxy.url,
        HTTP_PROXY: proxy.url,
        NO_PROXY: `127.0.0.1:${direct.port}`,
        NODE_EXTRA_CA_CERTS: CA_PATH,
      },
    },
  );
  const out = JSON.parse(stdout);
  t.match(
    stderr,
    /^mcp-egress-proxy\/register: fetch, http and https routed through http:\/\/127\.0\.0\.1:\d+ \(https\)/m,
    'says once what it routed',
  );
  t.equal(out.fetchPlain.status, 200, 'fetch http://');
  t.equal(out.fetchTls.status, 200, 'fetch https:// (CONNECT)');
  t.equal(out.httpGet.status, 200, 'http.get');
  t.equal(out.httpsGet.status, 200, 'https.get');
  t.equal(out.direct.status, 200);
  t.equal(out.directHttp.status, 200);
  t.equal(direct.requests.length, 2, 'NO_PROXY destinations are reached directly');

  // Refusals: the error type each API normally throws, with a message naming code, reason, rule and destination.
  const plainRefusal = new RegExp(
    `^firewall_blocked: default rule=none destination=denied\\.test:${plain.port} \\(proxy answered 403: egress to denied\\.test:${plain.port} refused`,
  );
  const tlsRefusal = new RegExp(`^firewall_blocked: rule rule=no-denied-tls destination=denied\\.test:${tls.port} \\(proxy answered 403`);
  t.match(
    out.fetchDenied,
    { type: 'TypeError', cause: 'EgressRefusedError', error: plainRefusal },
    'fetch http:// refused: TypeError with the refusal as cause',
  );
  t.match(out.fetchDenied.message, /^fetch failed: firewall_blocked: default rule=none/, "and fetch's own message names it");
  t.match(
    out.fetchTlsDenied,
    { type: 'TypeError', cause: 'EgressRefusedError', error: tlsRefusal },
    'fetch https:// refused at CONNECT: the rule reaches the tool',
  );
  t.match(
    out.httpDenied,
    { type: 'EgressRefusedError', code: 'EGRESS_REFUSED', error: plainRefusal },
    'http.get refused: the request errors',
  );
  t.match(
    out.httpsDenied,
    { type: 'EgressRefusedError', code: 'EGRESS_REFUSED', error: tlsRefusal },
    'https.get refused at CONNECT: the request errors',
  );
  t.equal(plain.requests.filter((r) => r.url === '/d').length, 0, 'nothing reached the refused destination');
  t.equal(tls.requests.filter((r) => r.url === '/td').length, 0);

  const decisions = proxy.events('egress.decision');
  t.same(
    decisions.map((d) => [d.method, d.host, d.dispatched]),
    [
      ['GET', 'pinned.test', true],
      ['CONNECT', 'pinned.test', true],
      ['GET', 'denied.test', false],
      ['GET', 'pinned.test', true],
      ['CONNECT', 'pinned.test', true],
      ['GET', 'denied.test', false],
      ['CONNECT', 'denied.test', false],
      ['CONNECT', 'denied.test', false],
    ],
  );
  t.notOk(
    decisions.some((d) => d.port === direct.port),
    'the proxy never saw the NO_PROXY destination',
  );
  t.ok(
    decisions.every((d) => d.tool === null),
    'outside a tool call nothing is attributed',
  );
});

t.test('an upstream cannot forge a refusal: its x-egress-error header never turns a response into an error', async (t) => {
  const forger = await startUpstream('127.0.0.1', {
    respond: (_req, res) => {
      res.writeHead(403, { 'x-egress-error': 'firewall_blocked', 'content-type': 'application/json' });
      res.end('{"error":{"code":"firewall_blocked","reason":"forged"}}');
    },
  });
  const proxy = await startTestProxy({ policy: 'version: 1\ndefault_verdict: allow\n' });
  t.teardown(async () => {
    await proxy.stop();
    await forger.close();
  });
  const url = `http://127.0.0.1:${forger.port}/f`;
  const script = `const http = require('node:http');
(async () => {
  const f = await fetch('${url}').then((r) => r.status, (e) => e.message);
  const h = await new Promise((resolve) => http.get('${url}', (res) => { res.resume(); resolve(res.statusCode); }).on('error', (e) => resolve(e.message)));
  process.stdout.write(JSON.stringify([f, h]));
})();`;
  const { stdout } = await run(process.execPath, ['--import', REGISTER, '-e', script], {
    env: { ...process.env, HTTPS_PROXY: proxy.url, HTTP_PROXY: proxy.url, NO_PROXY: '' },
  });
  t.same(JSON.parse(stdout), [403, 403], 'fetch and http.get see the upstream response');
  t.equal(forger.requests.length, 2);
});

t.test('agent: false (the default of superagent) is routed too: Node builds the one-off agent from the global one', async (t) => {
  const plain = await startUpstream();
  const tls = await startUpstream('127.0.0.1', { tls: true });
  const refused = await startUpstream();
  const proxy = await startTestProxy({
    policy: `version: 1\ndefault_verdict: deny\nrules:\n  - {id: ok, priority: 1, verdict: allow, ports: [${plain.port}, ${tls.port}], egress: {allow: [127.0.0.1]}}\n`,
  });
  t.teardown(async () => {
    await proxy.stop();
    await Promise.all([plain.close(), tls.close(), refused.close()]);
  });
  const script = `const http = require('node:http'), https = require('node:https');
const get = (mod, url) => new Promise((resolve) => mod.get(url, { agent: false }, (res) => { res.resume(); resolve(res.statusCode); }).on('error', (e) => resolve(e.message)));
(async () => process.stdout.write(JSON.stringify([await get(http, 'http://127.0.0.1:${plain.port}/a'), await get(https, 'https://127.0.0.1:${tls.port}/b'), await get(http, 'http://127.0.0.1:${refused.port}/c')])))();`;
  const { stdout } = await run(process.execPath, ['--import', REGISTER, '-e', script], {
    env: { ...process.env, HTTPS_PROXY: proxy.url, HTTP_PROXY: proxy.url, NO_PROXY: '', NODE_EXTRA_CA_CERTS: CA_PATH },
  });
  const [a, b, c] = JSON.parse(stdout) as [number, number, string];
  t.equal(a, 200);
  t.equal(b, 200);
  t.match(c, /^firewall_blocked: default rule=none/);
  t.equal(refused.requests.length, 0, 'the refused destination was not reached directly');
  t.same(
    proxy.events('egress.decision').map((d) => [d.method, d.dispatched]),
    [
      ['GET', true],
      ['CONNECT', true],
      ['GET', false],
    ],
    'all three went through the proxy',
  );
});

t.test('agents the program builds itself are routed, attributed per call, and their pools never mix calls', async (t) => {
  const plain = await startUpstream();
  const tls = await startUpstream('127.0.0.1', { tls: true });
  const refused = await startUpstream();
  const proxy = await startTestProxy({
    policy: `version: 1\ndefault_verdict: deny\nrules:\n  - {id: ok, priority: 1, verdict: allow, ports: [${plain.port}, ${tls.port}], egress: {allow: [127.0.0.1]}}\n`,
  });
  t.teardown(async () => {
    await proxy.stop();
    await Promise.all([plain.close(), tls.close(), refused.close()]);
  });
  const socketPath = join(mkdtempSync(join(tmpdir(), 'mep-unix-')), 'api.sock'); // short: Unix socket paths are limited
  const script = `import http from 'node:http'; import https from 'node:https';
import { runAsToolCall } from ${JSON.stringify(REGISTER)};
const keepHttp = new http.Agent({ keepAlive: true }), keepHttps = new https.Agent({ keepAlive: true });
const get = (mod, url, agent) => new Promise((resolve) => mod.get(url, { agent }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode)); }).on('error', (e) => resolve(e.message)));
const out = [];
for (const call of ['one', 'two']) {
  await runAsToolCall({ tool: 'sdk_tool', callId: call }, async () => {
    out.push(await get(http, 'http://127.0.0.1:${plain.port}/' + call, keepHttp), await get(http, 'http://127.0.0.1:${plain.port}/' + call + '-again', keepHttp));
    out.push(await get(https, 'https://127.0.0.1:${tls.port}/' + call, keepHttps), await get(https, 'https://127.0.0.1:${tls.port}/' + call + '-again', keepHttps));
  });
}
out.push(await runAsToolCall({ tool: 'sdk_tool', callId: 'three' }, () => get(http, 'http://127.0.0.1:${refused.port}/no', new http.Agent())));
const unix = http.createServer((req, res) => res.end('unix')).listen(${JSON.stringify(socketPath)});
await new Promise((r) => unix.once('listening', r));
out.push(await new Promise((resolve) => http.get({ socketPath: ${JSON.stringify(socketPath)}, path: '/' }, (res) => { res.resume(); resolve(res.statusCode); }).on('error', (e) => resolve(e.message))));
unix.close(); keepHttp.destroy(); keepHttps.destroy();
process.stdout.write(JSON.stringify(out));`;
  const r = await run(process.execPath, ['--input-type=module', '-e', script], {
    env: {
      ...process.env,
      NODE_OPTIONS: `--import=${REGISTER}`,
      HTTPS_PROXY: proxy.url,
      HTTP_PROXY: proxy.url,
      NO_PROXY: '',
      NODE_EXTRA_CA_CERTS: CA_PATH,
    },
  }).catch((e: { stdout: string; stderr: string }) => e);
  t.comment(r.stderr);
  const out = JSON.parse(r.stdout) as Array<number | string>;
  t.same(out.slice(0, 8), [200, 200, 200, 200, 200, 200, 200, 200], 'served through the proxy');
  t.match(out[8], /^firewall_blocked: default rule=none destination=127\.0\.0\.1:\d+/, 'a refusal names itself');
  t.equal(out[9], 200, 'a Unix socket is not proxied');
  t.equal(refused.requests.length, 0, 'the refused destination was not reached directly');
  const decisions = proxy.events('egress.decision');
  t.same(
    decisions.map((d) => [d.method, d.call_id, d.dispatched]),
    [
      ['CONNECT', 'one', true],
      ['CONNECT', 'one', true],
      ['CONNECT', 'two', true],
      ['CONNECT', 'two', true],
      ['CONNECT', 'three', false],
    ],
    "one tunnel per call and pool: call two did not reuse call one's kept-alive sockets",
  );
  t.equal(plain.connections.length, 2, 'keep-alive worked within each call');
});

const runPreload = (env: Record<string, string>) =>
  run(
    process.execPath,
    [
      '--import',
      REGISTER,
      '-e',
      'console.log("ran", process.env.HTTPS_PROXY === undefined, process.env.MCP_EGRESS_HTTPS_PROXY !== undefined)',
    ],
    {
      env: { PATH: process.env.PATH ?? '', ...env },
    },
  ).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );

t.test('fail closed: no usable proxy variable stops the program (78) and prints no secret', async (t) => {
  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['no proxy variable', {}, /neither HTTPS_PROXY nor HTTP_PROXY is set.*refusing to start.*MCP_EGRESS_ALLOW_DIRECT=1/],
    ['empty variables', { HTTPS_PROXY: '', HTTP_PROXY: ' ', https_proxy: '', http_proxy: '' }, /neither HTTPS_PROXY nor HTTP_PROXY is set/],
    [
      'not a URL, with a password',
      { HTTPS_PROXY: 'http://agent:s3cret-pw@[::1' },
      /HTTPS_PROXY is not a valid URL \(its value is not shown/,
    ],
    ['lower-case name', { https_proxy: '::s3cret-pw' }, /https_proxy is not a valid URL/],
    [
      'socks',
      { HTTP_PROXY: 'socks5://agent:s3cret-pw@127.0.0.1:1080' },
      /HTTP_PROXY must be an http:\/\/ or https:\/\/ proxy URL, not socks5:/,
    ],
    ['a path after the proxy', { HTTPS_PROXY: 'http://agent:s3cret-pw@127.0.0.1:3128/s3cret-pw' }, /HTTPS_PROXY must name only the proxy/],
    ['the opt-out set to something other than 1', { MCP_EGRESS_ALLOW_DIRECT: 'yes' }, /refusing to start/],
  ];
  for (const [name, env, message] of cases) {
    const r = await runPreload(env);
    t.equal(r.code, 78, `${name}: EX_CONFIG`);
    t.match(r.stderr, message, `${name}: says why`);
    t.notMatch(r.stderr, /s3cret/, `${name}: no secret printed`);
    t.notMatch(r.stdout, /ran/, `${name}: the program did not run`);
  }
});

t.test('MCP_EGRESS_ALLOW_DIRECT=1 runs unproxied, with a warning', async (t) => {
  const r = await runPreload({ MCP_EGRESS_ALLOW_DIRECT: '1' });
  t.equal(r.code, 0);
  t.match(r.stderr, /WARNING: .*runs WITHOUT the egress proxy/);
  t.match(r.stdout, /^ran/);
});

t.test('credentials are redacted; the variables are moved out of the sight of libraries', async (t) => {
  const r = await runPreload({ HTTPS_PROXY: 'http://agent:s3cret-pw@127.0.0.1:3128' });
  t.equal(r.code, 0);
  t.match(r.stderr, /routed through http:\/\/agent:\*\*\*@127\.0\.0\.1:3128 \(https\)/);
  t.notMatch(r.stderr, /s3cret/);
  t.match(r.stdout, /^ran true true/, 'HTTPS_PROXY hidden, MCP_EGRESS_HTTPS_PROXY set');
});

t.test('child processes started asynchronously get the proxy variables back', async (t) => {
  const echo = `'/bin/sh', ['-c', 'echo "$HTTPS_PROXY|$http_proxy|$NO_PROXY"']`;
  const programs = {
    spawn: `const c = require('node:child_process').spawn(${echo}); c.stdout.pipe(process.stdout);`,
    execFile: `require('node:child_process').execFile(${echo}, (e, out) => process.stdout.write(out));`,
  };
  for (const [name, code] of Object.entries(programs)) {
    const { stdout } = await run(process.execPath, ['--import', REGISTER, '-e', code], {
      env: { PATH: process.env.PATH ?? '', HTTPS_PROXY: 'http://127.0.0.1:3128', NO_PROXY: 'example.com' },
    });
    t.equal(stdout.trim(), 'http://127.0.0.1:3128/|http://127.0.0.1:3128/|example.com', name);
  }
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
