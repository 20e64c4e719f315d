/**
 * The console's files on the admin listener: exact paths only (no traversal however spelled),
 * GET and HEAD only, the strict headers on every answer under /console, the Host and Origin
 * checks first, the built files free of inline script, style attributes and other origins; and
 * GET /v1/calls?client=, the Calls view's route.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import type { Test } from 'tap';
import { builtConsoleDir, CONSOLE_CSP } from '../../src/admin/console-assets.js';
import { AdminServer } from '../../src/admin/server.js';
import { createResolver } from '../../src/net/resolve.js';
import { startTestProxyFor } from '../helpers/proxy.js';

const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const VIEWER = 'assets-viewer-token-0123456789';
const DEVELOPER = 'assets-developer-token-0123456789';

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** A request exactly as written (target, Host, Origin): no client normalises `..` or `\` here. */
function send(port: number, method: string, path: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, method, path, headers: { host: `127.0.0.1:${port}`, ...headers }, setHost: false },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

const POLICY = 'version: 1\nrules: []\n';
const CONFIG = `admin:
  listen: 127.0.0.1:0
  tokens:
    - {name: v, sha256: ${sha(VIEWER)}, role: viewer}
    - {name: d, sha256: ${sha(DEVELOPER)}, role: developer}`;

t.test('console files', async (t) => {
  const proxy = await startTestProxyFor(t, { policy: POLICY, config: CONFIG });
  const port = (proxy.running.admin?.server.address() as { port: number }).port;
  const strict = (t: Test, a: Answer, what: string) => {
    t.equal(a.headers['content-security-policy'], CONSOLE_CSP, `${what}: the CSP`);
    t.equal(a.headers['x-content-type-options'], 'nosniff', `${what}: nosniff`);
    t.equal(a.headers['referrer-policy'], 'no-referrer', `${what}: no referrer`);
    t.equal(a.headers['x-frame-options'], 'DENY', `${what}: no framing`);
  };

  t.test('the CSP says what the brief asks', async (t) => {
    const directives = new Map(
      CONSOLE_CSP.split(';')
        .map((d) => d.trim().split(/\s+/))
        .map(([k, ...v]) => [k, v.join(' ')]),
    );
    t.equal(directives.get('default-src'), "'none'");
    t.equal(directives.get('script-src'), "'self'");
    t.equal(directives.get('style-src'), "'self'");
    t.equal(directives.get('connect-src'), "'self'");
    t.equal(directives.get('frame-ancestors'), "'none'");
    t.notMatch(CONSOLE_CSP, /unsafe|\*|data:|http/, 'no unsafe-inline, unsafe-eval, wildcard, data: or other origin');
  });

  t.test('known paths, with their types, without a token', async (t) => {
    const expected: Array<[string, RegExp, string]> = [
      ['/console/', /^text\/html/, 'index.html'],
      ['/console/app.js', /^text\/javascript/, 'app.js'],
      ['/console/console.css', /^text\/css/, 'console.css'],
      ['/console/favicon.svg', /^image\/svg\+xml/, 'favicon.svg'],
    ];
    for (const [path, type, file] of expected) {
      const a = await send(port, 'GET', path);
      t.equal(a.status, 200, path);
      t.match(String(a.headers['content-type']), type, `${path} type`);
      t.equal(a.body, await readFile(join(builtConsoleDir(), file), 'utf8'), `${path} is the built ${file}`);
      strict(t, a, path);
      const head = await send(port, 'HEAD', path);
      t.equal(head.status, 200, `HEAD ${path}`);
      t.equal(head.headers['content-length'], String(Buffer.byteLength(a.body)), `HEAD ${path}: the length`);
    }
    const bare = await send(port, 'GET', '/console');
    t.equal(bare.status, 308);
    t.equal(bare.headers.location, '/console/');
    strict(t, bare, '/console');
  });

  t.test('nothing else: traversal in every spelling, other files, other methods', async (t) => {
    const paths = [
      '/console/../v1/policy',
      '/console/../../../../etc/passwd',
      '/console/%2e%2e/v1/policy',
      '/console/%2E%2E/%2E%2E/package.json',
      '/console/..%2fv1%2fpolicy',
      '/console/..%2f..%2fpackage.json',
      '/console/..\\..\\package.json',
      '/console/%5c..%5c..%5cpackage.json',
      '/console/.%2e/.%2e/package.json',
      '/console/./app.js',
      '/console//app.js',
      '/console/app.js/',
      '/console/app.js%00.css',
      '/console/APP.JS',
      '/console/index.html',
      '/console/app.js.map',
      '/console/../../src/admin/server.ts',
      '/console/%2e%2e%2f%2e%2e%2fconfig/proxy.yaml',
      '/console/constructor',
      '/console/__proto__',
    ];
    for (const path of paths) {
      const a = await send(port, 'GET', path);
      t.equal(a.status, 404, `${path}: 404`);
      t.equal(JSON.parse(a.body).error.code, 'not_found', `${path}: not_found`);
      t.notMatch(a.body, /root:|"name": "mcp-egress-proxy"|version: 1|import /, `${path}: no file's content`);
      strict(t, a, path);
    }
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
      const a = await send(port, method, '/console/');
      t.equal(a.status, 405, `${method} /console/: 405`);
      t.equal(a.headers.allow, 'GET, HEAD');
      strict(t, a, `${method} /console/`);
    }
  });

  t.test('the Host and Origin checks come first', async (t) => {
    const rebound = await send(port, 'GET', '/console/', { host: `evil.example:${port}` });
    t.equal(rebound.status, 421, 'a rebinding page cannot load the console');
    t.notMatch(rebound.body, /<script/);
    const crossSite = await send(port, 'GET', '/console/app.js', { origin: 'http://evil.example' });
    t.equal(crossSite.status, 403, 'another origin cannot read the files');
    const same = await send(port, 'GET', '/console/app.js', { origin: `http://127.0.0.1:${port}` });
    t.equal(same.status, 200, 'the console itself may');
  });

  t.test('the built files: no inline script, no style attribute, nothing from elsewhere', async (t) => {
    const html = await readFile(join(builtConsoleDir(), 'index.html'), 'utf8');
    const scripts = [...html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/g)];
    t.equal(scripts.length, 1, 'one script element');
    t.match(scripts[0]?.[1], /src="app\.js"/, 'loaded from this listener');
    t.equal(scripts[0]?.[2]?.trim(), '', 'no inline script');
    t.notMatch(html, /\sstyle=|<style|\son[a-z]+=/i, 'no style attribute, style element or inline handler');
    const js = await readFile(join(builtConsoleDir(), 'app.js'), 'utf8');
    t.notMatch(js, /innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function/, 'no HTML from strings, no eval');
    const urls = [...`${html}\n${js}`.matchAll(/\bhttps?:\/\/[^\s'"`)]+/g)].map((m) => m[0]);
    t.same([...new Set(urls)], ['http://www.w3.org/2000/svg'], 'no URL but the SVG namespace (a name, never fetched)');
    t.notMatch(js, /localStorage|document\.cookie/, 'the token lives in sessionStorage only');
  });
});

t.test('a package without its built console answers 503, not a crash', async (t) => {
  const empty = await mkdtemp(join(tmpdir(), 'mep-console-'));
  const proxy = await startTestProxyFor(t, { policy: POLICY, config: CONFIG });
  const { running } = proxy;
  const resolver = createResolver({ servers: [], timeoutMs: 100, maxTtlSeconds: 0 });
  const admin = new AdminServer({ config: running.config, running, metrics: running.metrics, resolver, consoleDir: empty });
  const { port } = await admin.listen('127.0.0.1', 0);
  t.teardown(() => admin.close());
  const a = await send(port, 'GET', '/console/');
  t.equal(a.status, 503);
  t.equal(JSON.parse(a.body).error.code, 'console_not_built');
  t.equal(a.headers['content-security-policy'], CONSOLE_CSP);
});

t.test("GET /v1/calls?client=: one client's open registrations (viewer)", async (t) => {
  const proxy = await startTestProxyFor(t, { policy: POLICY, config: CONFIG });
  const port = (proxy.running.admin?.server.address() as { port: number }).port;
  const get = (path: string, token?: string) => send(port, 'GET', path, token ? { authorization: `Bearer ${token}` } : {});
  await proxy.running.registry.register({ callId: 'c-1', tool: 'fetch', client: '10.0.0.7', sessionId: 's-1', ttlMs: 60_000 });
  await proxy.running.registry.register({ callId: 'c-2', tool: 'read', client: 'other', ttlMs: 60_000 });
  t.equal((await get('/v1/calls?client=10.0.0.7')).status, 401, 'a token is needed');
  const a = await get('/v1/calls?client=10.0.0.7', VIEWER);
  t.equal(a.status, 200);
  const body = JSON.parse(a.body);
  t.equal(body.client, '10.0.0.7');
  t.same(
    body.calls.map((c: { call_id: string; tool: string; session_id: string }) => [c.call_id, c.tool, c.session_id]),
    [['c-1', 'fetch', 's-1']],
    "only that client's",
  );
  t.equal(
    JSON.parse((await get('/v1/calls?client=%3A%3Affff%3A10.0.0.7', VIEWER)).body).calls.length,
    1,
    'an IP client canonicalised as the data path does',
  );
  t.same(JSON.parse((await get('/v1/calls?client=nobody', DEVELOPER)).body).calls, [], 'none');
  for (const bad of ['/v1/calls', '/v1/calls?client=', '/v1/calls?client=a&client=b', '/v1/calls?client=a&x=1', '/v1/calls?client=%01']) {
    t.equal((await get(bad, VIEWER)).status, 400, `${bad}: 400`);
  }
});
