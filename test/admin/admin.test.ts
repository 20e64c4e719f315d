/** The admin API: every route and role, bad tokens, bad bodies, drafts with errors, metrics. */
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { execFile } from 'node:child_process';
import { request } from 'node:http';
import { promisify } from 'node:util';
import { connect } from 'node:net';
import t from 'tap';
import { AdminServer } from '../../src/admin/server.js';
import { isLoopbackHost as isLoopback } from '../../src/net/address.js';
import { parsePolicy } from '../../src/policy/schema.js';
import { startTestProxy } from '../helpers/proxy.js';
import { getRequest, rawRequest } from '../helpers/raw.js';
import { api } from '../helpers/admin.js';
import { startUpstream } from '../helpers/upstream.js';

const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const VIEWER = 'viewer-token-0123456789';
const DEVELOPER = 'developer-token-0123456789';

/** A request as sent, with any Host, Origin or target (fetch would fix them up). */
function send(
  port: number,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: string,
): Promise<{ status: number; json: any; text: string }> {
  return sendTo('127.0.0.1', port, method, path, headers, body);
}

function sendTo(
  address: string,
  port: number,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: string,
): Promise<{ status: number; json: any; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: address,
        port,
        method,
        path,
        headers: { host: address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`, ...headers },
        setHost: false,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => {
          let json: any;
          try {
            json = JSON.parse(text);
          } catch {
            json = null;
          }
          resolve({ status: res.statusCode ?? 0, json, text });
        });
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

t.test('admin API', async (t) => {
  const upstream = await startUpstream();
  const proxy = await startTestProxy({
    policy: `version: 1
default_verdict: deny
observe_mode: true
rules:
  - {id: allow-local, priority: 10, label: Local upstream, verdict: allow, tool_name_glob: fetch, egress: {allow: [127.0.0.0/8]}}
`,
    config: `admin:
  listen: 127.0.0.1:0
  tokens:
    - {name: dash, sha256: ${sha(VIEWER)}, role: viewer}
    - {name: ci, sha256: ${sha(DEVELOPER)}, role: developer}`,
  });
  t.teardown(async () => {
    await proxy.stop();
    await upstream.close();
  });
  const listening = proxy.events('listening');
  t.match(listening, [{ listener: 'proxy' }, { listener: 'admin', address: '127.0.0.1' }]);
  t.ok((listening[1]?.port as number) > 0);

  t.test('health, readiness and metrics need no token', async (t) => {
    t.match((await api(proxy, 'GET', '/healthz')).json, { status: 'ok' });
    t.match((await api(proxy, 'GET', '/readyz')).json, { ready: true, policy_generation: 1 });
    await rawRequest(proxy.port, getRequest(`http://127.0.0.1:${upstream.port}/`, `127.0.0.1:${upstream.port}`, 'x-mcp-tool: fetch\r\n'));
    await rawRequest(proxy.port, getRequest('http://169.254.169.254/', '169.254.169.254'));
    const m = await api(proxy, 'GET', '/metrics');
    t.equal(m.status, 200);
    t.match(m.headers.get('content-type'), /text\/plain/);
    t.match(m.text, /egress_decisions_total\{verdict="allow",reason="rule",rule="allow-local",dispatched="true",shadow="false"\} 1/);
    t.match(m.text, /egress_baseline_refusals_total\{address_class="metadata"\} 1/);
    t.match(m.text, /egress_policy_generation 1/);
    t.match(m.text, /egress_bytes_total\{direction="down"\} [1-9]/);
    t.match(m.text, /egress_calls_closed_total\{end="upstream_closed",kind="http"\} 1/);
    const again = await api(proxy, 'GET', '/metrics');
    t.match(
      again.text,
      /egress_decisions_total\{verdict="allow",reason="rule",rule="allow-local",dispatched="true",shadow="false"\} 1\n/,
      'a second scrape does not count twice',
    );
    t.equal(
      /egress_bytes_total\{direction="down"\} (\d+)/.exec(again.text)?.[1],
      /egress_bytes_total\{direction="down"\} (\d+)/.exec(m.text)?.[1],
    );
    t.match(m.text, /egress_open_tunnels 0/);
    t.match(m.text, /egress_policy_reloads_total\{result="loaded",trigger="start"\} 1/);
    // The open-tunnel gauge is read at scrape time: one open tunnel shows, and goes again.
    const tunnel = connect({ host: '127.0.0.1', port: proxy.port });
    tunnel.write(`CONNECT 127.0.0.1:${upstream.port} HTTP/1.1\r\nHost: x\r\nx-mcp-tool: fetch\r\n\r\n`);
    t.match((await once(tunnel, 'data'))[0].toString(), /^HTTP\/1.1 200/);
    t.match((await api(proxy, 'GET', '/metrics')).text, /egress_open_tunnels 1/);
    tunnel.destroy();
    await proxy.waitFor((e) => e.event === 'egress.closed' && e.bytes_up === 0);
    t.match((await api(proxy, 'GET', '/metrics')).text, /egress_open_tunnels 0/);
  });

  t.test('tokens and roles', async (t) => {
    for (const [method, path, role] of [
      ['GET', '/v1/policy', 'viewer'],
      ['GET', '/v1/discovered', 'viewer'],
      ['POST', '/v1/reload', 'developer'],
      ['POST', '/v1/test', 'developer'],
      ['POST', '/v1/calls', 'developer'],
      ['DELETE', '/v1/calls/x', 'developer'],
    ] as const) {
      const none = await api(proxy, method, path);
      t.equal(none.status, 401, `${method} ${path} without a token`);
      t.equal(none.json?.error?.code, 'unauthorized');
      t.match(none.headers.get('www-authenticate'), /^Bearer/);
      t.equal((await api(proxy, method, path, { token: 'wrong-token' })).status, 401, 'a wrong token');
      const viewer = await api(proxy, method, path, { token: VIEWER, ...(method === 'GET' ? {} : { body: {} }) });
      if (role === 'developer') {
        t.equal(viewer.status, 403, `${method} ${path} as viewer`);
        t.equal(viewer.json?.error?.code, 'forbidden');
      } else t.equal(viewer.status, 200, `${method} ${path} as viewer`);
    }
    t.equal((await api(proxy, 'GET', '/v1/policy', { token: DEVELOPER })).status, 200, 'a developer may do what a viewer may');
  });

  t.test('GET /v1/policy', async (t) => {
    const r = await api(proxy, 'GET', '/v1/policy', { token: VIEWER });
    t.match(r.json, {
      generation: 1,
      sha256: /^[0-9a-f]{64}$/,
      source: proxy.policyFile,
      last_error: null,
      default_verdict: 'deny',
      observe_mode: true,
    });
    t.match(r.json.rules, [
      {
        id: 'allow-local',
        label: 'Local upstream',
        priority: 10,
        verdict: 'allow',
        tool_name_glob: 'fetch',
        egress: { allow: ['127.0.0.0/8'], deny: [] },
        after: null,
      },
    ]);
    t.ok(!Number.isNaN(Date.parse(r.json.loaded_at)));
  });

  t.test('POST /v1/test: live and draft policies', async (t) => {
    const live = await api(proxy, 'POST', '/v1/test', {
      token: DEVELOPER,
      body: { destination: 'https://api.example.com/', tool: 'fetch', resolve: { 'api.example.com': ['127.0.0.2'] } },
    });
    t.equal(live.status, 200);
    t.match(live.json, { verdict: 'allow', dispatched: true, reason: 'rule', rule: { id: 'allow-local' }, addresses: ['127.0.0.2'] });
    const byName = await api(proxy, 'POST', '/v1/test', { token: DEVELOPER, body: { destination: 'evil.example:443' } });
    t.match(byName.json, { dispatched: false, reason: 'default', addresses: [] });
    const draft = await api(proxy, 'POST', '/v1/test', {
      token: DEVELOPER,
      body: {
        policy: 'version: 1\ndefault_verdict: allow\n',
        destination: 'evil.example:443',
        resolve: { 'evil.example': ['93.184.216.34'] },
      },
    });
    t.match(draft.json, { verdict: 'allow', dispatched: true, reason: 'default' });
    const broken = await api(proxy, 'POST', '/v1/test', {
      token: DEVELOPER,
      body: { policy: 'version: 1\nrules:\n  - {priority: x, verdict: deny}\n', destination: 'a.example:443' },
    });
    t.equal(broken.status, 400);
    t.match(broken.json.error, { code: 'invalid_policy', errors: ['draft.yaml:3:16: error: priority must be an integer'] });
    // The test proxy exempts loopback from the baseline: only `self` refuses its own ports.
    const adminPort = (proxy.running.admin?.server.address() as { port: number }).port;
    for (const destination of [`127.0.0.1:${proxy.port}`, `http://127.0.0.1:${adminPort}/v1/calls`, `0.0.0.0:${proxy.port}`]) {
      const self = await api(proxy, 'POST', '/v1/test', {
        token: DEVELOPER,
        body: { policy: 'version: 1\ndefault_verdict: allow\n', destination },
      });
      t.match(
        self.json,
        { dispatched: false, reason: 'ssrf_baseline', address_class: 'self' },
        `${destination}: self, as the live proxy says`,
      );
    }
    const viaProxy = await rawRequest(
      proxy.port,
      getRequest(`http://127.0.0.1:${adminPort}/v1/policy`, `127.0.0.1:${adminPort}`, 'x-mcp-tool: fetch\r\n'),
    );
    t.match(JSON.parse(viaProxy.body).error, { reason: 'ssrf_baseline', address_class: 'self' }, 'the live proxy agrees');
    const metadata = await api(proxy, 'POST', '/v1/test', { token: DEVELOPER, body: { destination: 'http://0xA9FEA9FE/' } });
    t.match(metadata.json, { reason: 'ssrf_baseline', address_class: 'metadata' });
    for (const [name, body, status] of [
      ['no destination', { tool: 'x' }, 400],
      ['bad destination', { destination: 'a.example' }, 400],
      ['bad resolve', { destination: 'a.example:443', resolve: { 'a.example': 'nope' } }, 400],
      ['resolve to a non-IP', { destination: 'a.example:443', resolve: { 'a.example': ['nope'] } }, 400],
      ['tool not a string', { destination: 'a.example:443', tool: 5 }, 400],
      ['not an object', [1, 2], 400],
    ] as const) {
      const r = await api(proxy, 'POST', '/v1/test', { token: DEVELOPER, body });
      t.equal(r.status, status, name);
      t.equal(r.json?.error?.code, 'bad_request', name);
    }
    t.equal((await api(proxy, 'POST', '/v1/test', { token: DEVELOPER, raw: '{not json' })).status, 400, 'malformed JSON');
    t.equal((await api(proxy, 'POST', '/v1/test', { token: DEVELOPER, raw: 'destination=x', type: 'text/plain' })).status, 415, 'not JSON');
    const huge = await api(proxy, 'POST', '/v1/test', {
      token: DEVELOPER,
      raw: JSON.stringify({ policy: 'x'.repeat(300 * 1024), destination: 'a:1' }),
    }).catch(() => ({ status: 413, json: null }));
    t.equal(huge.status, 413, 'oversized body');
  });

  t.test('POST /v1/test: sequence clauses with an explicit history', async (t) => {
    const policy = `version: 1
default_verdict: allow
rules:
  - {id: no-egress-after-read, priority: 1, verdict: deny, after: {tool_name_glob: "read_*", within_seconds: 600}}
  - {id: no-egress-after-internal, priority: 2, verdict: deny, after: {hosts: [10.0.0.0/8], within_seconds: 300}, egress: {allow: [api.openai.com]}}
`;
    const ask = (extra: Record<string, unknown>) =>
      api(proxy, 'POST', '/v1/test', {
        token: DEVELOPER,
        body: {
          policy,
          destination: 'evil.example:443',
          tool: 'fetch',
          server: 'srv',
          session_id: 'S',
          resolve: { 'evil.example': ['93.184.216.34'] },
          ...extra,
        },
      });
    const read = await ask({
      history: [
        { tool: 'search', seconds_ago: 2 },
        { tool: 'read_file', seconds_ago: 30, call_id: 'r-1' },
      ],
    });
    t.equal(read.status, 200);
    t.match(read.json, {
      dispatched: false,
      rule: { id: 'no-egress-after-read' },
      after: { tool: 'read_file', call_id: 'r-1', server: 'srv', session_id: 'S', host: null, seconds_ago: 30 },
      addresses: [],
    });
    t.match(
      (await ask({ history: [{ tool: 'read_file', seconds_ago: 700 }] })).json,
      { dispatched: true, after: null },
      'outside the window',
    );
    t.match(
      (await ask({ call_id: 'r-1', history: [{ tool: 'read_file', seconds_ago: 30, call_id: 'r-1' }] })).json,
      { dispatched: true },
      'the call itself',
    );
    const internal = await ask({ history: [{ tool: 'fetch', seconds_ago: 10, host: 'wiki.internal', address: '10.1.2.3' }] });
    t.match(internal.json, {
      dispatched: false,
      rule: { id: 'no-egress-after-internal' },
      after: { host: 'wiki.internal', seconds_ago: 10 },
    });
    t.match(
      (await ask({ history: [{ tool: 'fetch', seconds_ago: 10, host: 'wiki.internal', address: '10.1.2.3', dispatched: false }] })).json,
      { dispatched: true },
      'refused: read nothing',
    );
    const explained = await ask({ history: [] });
    t.match(explained.json, { dispatched: true, after: null });
    t.match(explained.json.trace[0].not_matched[0], { rule: 'no-egress-after-read', why: 'no earlier call matching after within 600 s' });
    t.match((await ask({})).json, { dispatched: true }, 'session_id without history: the live history (none recorded here)');
    for (const [name, extra, message] of [
      ['history not a list', { history: { tool: 'x' } }, /history must be a list/],
      ['too many earlier calls', { history: Array.from({ length: 1025 }, () => ({ tool: 'x', seconds_ago: 1 })) }, /at most 1024/],
      ['an item not an object', { history: [1] }, /history\[0\]: must be an object/],
      ['no tool', { history: [{ seconds_ago: 1 }] }, /history\[0\]: tool is required/],
      ['no seconds_ago', { history: [{ tool: 'x' }] }, /history\[0\]: seconds_ago is required/],
      ['negative seconds_ago', { history: [{ tool: 'x', seconds_ago: -1 }] }, /seconds_ago must be a number of seconds/],
      ['seconds_ago a string', { history: [{ tool: 'x', seconds_ago: '5' }] }, /seconds_ago must be a number of seconds/],
      ['unknown field', { history: [{ tool: 'x', seconds_ago: 1, session_id: 'T' }] }, /history\[0\]: unknown field 'session_id'/],
      [
        'dispatched not a boolean',
        { history: [{ tool: 'x', seconds_ago: 1, host: 'a.example', dispatched: 'yes' }] },
        /dispatched must be true or false/,
      ],
      [
        'dispatched without host',
        { history: [{ tool: 'x', seconds_ago: 1, dispatched: true }] },
        /dispatched applies only to an egress call/,
      ],
      ['bad host', { history: [{ tool: 'x', seconds_ago: 1, host: 'a b' }] }, /host must be a host name or an IP address/],
      ['bad address', { history: [{ tool: 'x', seconds_ago: 1, address: 'a.example' }] }, /address must be an IP address/],
      [
        'bad earlier call id',
        { history: [{ tool: 'x', seconds_ago: 1, call_id: 'a b' }] },
        /history\[1\]|call_id must be 1 to 256 visible ASCII/,
      ],
      ['bad call_id', { call_id: 'a b' }, /call_id must be 1 to 256 visible ASCII/],
      ['bad session_id', { session_id: 'line\nbreak' }, /session_id must be a string/],
    ] as const) {
      const r = await ask(extra);
      t.equal(r.status, 400, name);
      t.equal(r.json?.error?.code, 'bad_request', name);
      t.match(r.json?.error?.message, message, name);
    }
  });

  t.test('POST and DELETE /v1/calls', async (t) => {
    const created = await api(proxy, 'POST', '/v1/calls', {
      token: DEVELOPER,
      body: { call_id: 'c'.repeat(32), tool: 'fetch', client: '127.0.0.1', session_id: 's1', ttl_ms: 60000 },
    });
    t.equal(created.status, 201);
    t.match(created.json, { call_id: 'c'.repeat(32), tool: 'fetch', client: '127.0.0.1', session_id: 's1' });
    const tagged = await rawRequest(proxy.port, getRequest(`http://127.0.0.1:${upstream.port}/tagged`, `127.0.0.1:${upstream.port}`));
    t.equal(tagged.status, 200, 'the registered call attributes a header-less connection');
    t.match(proxy.events('egress.decision').at(-1), { tool: 'fetch', call_id: 'c'.repeat(32), session_id: 's1' });
    t.equal(
      (
        await api(proxy, 'POST', '/v1/calls', {
          token: DEVELOPER,
          body: { call_id: 'c'.repeat(32), tool: 'fetch', client: 'someone-else' },
        })
      ).status,
      409,
      'an id of another client',
    );
    for (const body of [
      {},
      { call_id: 'x y', tool: 't', client: 'c' },
      { call_id: 'x', tool: '', client: 'c' },
      { call_id: 'x', tool: 't' },
      { call_id: 'x', tool: 't', client: 'c', ttl_ms: 0 },
      { call_id: 'x', tool: 't', client: 'c', session_id: 5 },
    ]) {
      t.equal((await api(proxy, 'POST', '/v1/calls', { token: DEVELOPER, body })).status, 400, JSON.stringify(body));
    }
    t.equal((await api(proxy, 'DELETE', `/v1/calls/${'c'.repeat(32)}`, { token: DEVELOPER })).status, 204);
    t.equal((await api(proxy, 'DELETE', `/v1/calls/${'c'.repeat(32)}`, { token: DEVELOPER })).status, 404);
    t.match((await api(proxy, 'GET', '/metrics')).text, /egress_registered_calls 0/);
  });

  t.test('GET /v1/discovered and its YAML draft', async (t) => {
    await rawRequest(proxy.port, getRequest(`http://127.0.0.1:${upstream.port}/`, `127.0.0.1:${upstream.port}`, 'x-mcp-tool: search\r\n'));
    await rawRequest(proxy.port, getRequest('http://docs.example/', 'docs.example', 'x-mcp-tool: search\r\n'));
    const r = await api(proxy, 'GET', '/v1/discovered', { token: VIEWER });
    t.match(r.json.destinations, [
      { server: '127.0.0.1', tool: 'search', host: '127.0.0.1', port: upstream.port, count: 1 },
      { tool: 'search', host: 'docs.example', port: 80 },
    ]);
    const yaml = await api(proxy, 'GET', '/v1/discovered?format=yaml', { token: VIEWER });
    t.match(yaml.headers.get('content-type'), /yaml/);
    const parsed = parsePolicy('draft.yaml', yaml.text);
    t.ok(parsed.spec, `the draft passes check: ${parsed.diagnostics.map((d) => d.message).join('; ')}`);
    t.match(parsed.spec?.rules[0], {
      verdict: 'allow',
      toolGlob: 'search',
      serverGlob: '127.0.0.1',
      ports: [80, upstream.port].sort((a, b) => a - b),
    });
  });

  t.test('reload and last_error', async (t) => {
    await writeFile(proxy.policyFile, 'version: 1\nrules: [\n');
    const rejected = await api(proxy, 'POST', '/v1/reload', { token: DEVELOPER });
    t.equal(rejected.status, 422);
    t.match(rejected.json.error.errors[0], /policy\.yaml:3:1: error:/);
    const policy = await api(proxy, 'GET', '/v1/policy', { token: VIEWER });
    t.equal(policy.json.generation, 1, 'the last good policy keeps serving');
    t.match(policy.json.last_error.errors[0], /policy\.yaml:3:1: error:/);
    t.match((await api(proxy, 'GET', '/metrics')).text, /egress_policy_last_reload_failed 1/);
    await writeFile(proxy.policyFile, 'version: 1\ndefault_verdict: allow\n');
    const loaded = await api(proxy, 'POST', '/v1/reload', { token: DEVELOPER });
    t.equal(loaded.status, 200);
    t.ok(loaded.json.generation >= 2);
    t.equal((await api(proxy, 'GET', '/v1/policy', { token: VIEWER })).json.last_error, null);
    t.match((await api(proxy, 'GET', '/metrics')).text, /egress_policy_last_reload_failed 0/);
  });

  t.test('Host and Origin: DNS rebinding and cross-site pages are refused on every route', async (t) => {
    const port = (proxy.running.admin?.server.address() as { port: number }).port;
    const auth = { authorization: `Bearer ${DEVELOPER}`, 'content-type': 'application/json' };
    const register = JSON.stringify({ call_id: 'r'.repeat(32), tool: 'fetch', client: '127.0.0.1' });
    t.equal((await send(port, 'GET', '/healthz', { host: `localhost:${port}` })).status, 200, 'localhost is fine on loopback');
    for (const [method, path, body] of [
      ['GET', '/healthz', undefined],
      ['GET', '/metrics', undefined],
      ['GET', '/v1/policy', undefined],
      ['POST', '/v1/calls', register],
      ['POST', '/v1/reload', undefined],
      ['OPTIONS', '/v1/calls', undefined],
      ['GET', '/nope', undefined],
    ] as const) {
      const rebound = await send(port, method, path, { ...auth, host: `evil.example:${port}` }, body);
      t.equal(rebound.status, 421, `${method} ${path}: a rebinding Host`);
      t.equal(rebound.json?.error?.code, 'misdirected_request');
      const cross = await send(port, method, path, { ...auth, origin: 'http://evil.example' }, body);
      t.equal(cross.status, 403, `${method} ${path}: a cross-site Origin`);
      t.equal(cross.json?.error?.code, 'forbidden_origin');
      // An iframe or a navigation from another page carries no Origin, but the browser says whose page it is for.
      for (const site of ['same-site', 'cross-site']) {
        const framed = await send(port, method, path, { ...auth, 'sec-fetch-site': site }, body);
        t.equal(framed.status, 403, `${method} ${path}: Sec-Fetch-Site ${site}`);
        t.equal(framed.json?.error?.code, 'forbidden_origin');
      }
    }
    t.equal((await send(port, 'GET', '/v1/policy', { ...auth, 'sec-fetch-site': 'same-origin' })).status, 200, "the console's own fetch");
    t.equal(proxy.running.registry.size(), 0, 'even with a developer token, nothing was registered');
    const refused = await proxy.waitFor((e) => e.event === 'admin.refused' && e.code === 'misdirected_request' && e.target === '/v1/calls');
    t.match(refused, { status: 421, method: 'POST', host: `evil.example:${port}`, remote: '127.0.0.1' }, 'refusals are logged');
    t.ok(proxy.events('admin.refused').some((e) => e.code === 'forbidden_origin' && e.origin === 'http://evil.example'));
    t.notMatch(JSON.stringify(proxy.events()), new RegExp(DEVELOPER), 'never the token');
    // Red-team F3: node:http keeps the first Host; a second (or a second Origin) must not ride along unseen.
    for (const [name, extra] of [
      ['own Host then a rebinding one', `Host: 127.0.0.1:${port}\r\nHost: evil.example:${port}\r\n`],
      ['a rebinding Host then its own', `Host: evil.example:${port}\r\nHost: 127.0.0.1:${port}\r\n`],
      ['own Host twice', `Host: 127.0.0.1:${port}\r\nHost: 127.0.0.1:${port}\r\n`],
      ['two Origins', `Host: 127.0.0.1:${port}\r\nOrigin: http://127.0.0.1:${port}\r\nOrigin: http://evil.example\r\n`],
    ]) {
      const raw = await rawRequest(
        port,
        `GET /v1/policy HTTP/1.1\r\n${extra}Authorization: Bearer ${DEVELOPER}\r\nConnection: close\r\n\r\n`,
      );
      t.equal(raw.status, 400, `${name}: 400`);
      t.equal(JSON.parse(raw.body).error.code, 'bad_request', `${name}: bad_request`);
    }
    const own = await send(port, 'POST', '/v1/calls', { ...auth, origin: `http://127.0.0.1:${port}` }, register);
    t.equal(own.status, 201, 'its own origin (the console) may write');
    t.equal((await send(port, 'DELETE', `/v1/calls/${'r'.repeat(32)}`, auth)).status, 204);
  });

  t.test('malformed paths, queries and bodies: 400 with the JSON error body, never 500, no stack logged', async (t) => {
    const port = (proxy.running.admin?.server.address() as { port: number }).port;
    const auth = { authorization: `Bearer ${DEVELOPER}` };
    const json = { ...auth, 'content-type': 'application/json' };
    const calls = (body: unknown) => ['POST', '/v1/calls', json, JSON.stringify(body)] as const;
    const test = (body: unknown) => ['POST', '/v1/test', json, JSON.stringify(body)] as const;
    const cases: Array<readonly [string, string, Record<string, string>, string | undefined]> = [
      ['DELETE', '/v1/calls/%E0%A4%A', auth, undefined],
      ['DELETE', '/v1/calls/%', auth, undefined],
      ['DELETE', '/v1/calls/%FF', auth, undefined],
      ['DELETE', '/v1/calls/a%20b', auth, undefined],
      ['DELETE', '/v1/calls/', auth, undefined],
      ['DELETE', `/v1/calls/${'x'.repeat(300)}`, auth, undefined],
      ['GET', '/v1/discovered?format=yaml&format=json', auth, undefined],
      ['GET', '/v1/discovered?format=xml', auth, undefined],
      ['GET', '/v1/discovered?other=1', auth, undefined],
      ['GET', '/v1/policy?x=1', auth, undefined],
      ['GET', '/v1/policy?%E0%A4%A=1', auth, undefined],
      ['POST', '/v1/calls', json, '{"call_id":'],
      ['POST', '/v1/calls', json, '"a string"'],
      ['POST', '/v1/calls', json, 'null'],
      ['POST', '/v1/calls', json, '\ud800'],
      calls({ call_id: 'a'.repeat(257), tool: 't', client: 'c' }),
      calls({ call_id: 'a', tool: 't'.repeat(257), client: 'c' }),
      calls({ call_id: 'a', tool: 't', client: 'c'.repeat(257) }),
      calls({ call_id: 'a', tool: 't', client: 'c', session_id: 's'.repeat(257) }),
      calls({ call_id: 'a', tool: 'line\nbreak', client: 'c' }),
      calls({ call_id: 'a', tool: ['t'], client: 'c' }),
      calls({ call_id: 5, tool: 't', client: 'c' }),
      calls({ call_id: 'a', tool: 't', client: 'c', ttl_ms: 1e20 }),
      calls({ call_id: 'a', tool: 't', client: 'c', ttl_ms: '5' }),
      calls({ call_id: 'a', tool: 't', client: 'c', extra: 1 }),
      ['POST', '/v1/calls', json, '{"call_id":"a","tool":"t","client":"c","__proto__":{"x":1}}'],
      test({ destination: 'a.example:443', resolve: { ['a.example']: Array.from({ length: 65 }, () => '10.0.0.1') } }),
      test({
        destination: 'a.example:443',
        resolve: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`h${i}.example`, ['10.0.0.1']])),
      }),
      test({ destination: 'a.example:443', resolve: { 'a b': ['10.0.0.1'] } }),
      test({ destination: 'x'.repeat(3000) }),
      test({ destination: 'a.example:443', server: 7 }),
      test({ destination: 'a.example:443', policy: 7 }),
      test({ destination: 'a.example:443', nonsense: true }),
      test({ destination: 'http://[::1' }),
      test({ destination: 'a.example:443', history: 'x' }),
      test({ destination: 'a.example:443', history: [1] }),
      test({ destination: 'a.example:443', call_id: { x: 1 } }),
      test({ destination: 'a.example:443', session_id: '' }),
      ['GET', 'http://127.0.0.1/v1/policy', auth, undefined],
    ];
    for (const [method, path, headers, body] of cases) {
      const r = await send(port, method, path, headers, body);
      t.equal(r.status, 400, `${method} ${path.slice(0, 60)} ${String(body).slice(0, 80)}`);
      t.equal(r.json?.error?.code, 'bad_request', `${method} ${path.slice(0, 60)}: the usual JSON body`);
    }
    t.equal(proxy.events('admin.internal_error').length, 0, 'no internal error logged');
    t.notMatch(JSON.stringify(proxy.events()), /\s+at .*\.(ts|js):\d+/, 'no stack in the log');
    t.equal((await send(port, 'GET', '/v1/discovered?format=json', auth)).status, 200, 'a good query still works');
  });

  t.test('unknown routes and methods', async (t) => {
    t.equal((await api(proxy, 'GET', '/nope')).status, 404);
    t.equal((await api(proxy, 'DELETE', '/v1/policy', { token: DEVELOPER })).status, 405);
  });
});

t.test('without tokens the admin API serves only on loopback, and every caller is a viewer', async (t) => {
  t.ok(isLoopback('127.0.0.1') && isLoopback('::1') && isLoopback('127.8.9.10'));
  t.notOk(isLoopback('0.0.0.0') || isLoopback('10.0.0.1') || isLoopback('localhost'));
  const proxy = await startTestProxy({ policy: 'version: 1\n', config: 'admin: {listen: 127.0.0.1:0}' });
  t.teardown(() => proxy.stop());
  t.equal((await api(proxy, 'GET', '/v1/policy')).status, 200, 'a viewer route needs no token');
  t.equal((await api(proxy, 'GET', '/v1/discovered')).status, 200);
  // What a compromised MCP server on the same host would try: register its own call under any
  // tool name, end the gateway's calls, reload, or make the proxy resolve names for it.
  for (const [method, path, body] of [
    ['POST', '/v1/calls', { call_id: 'e'.repeat(32), tool: 'trusted_tool', client: '127.0.0.1' }],
    ['DELETE', `/v1/calls/${'e'.repeat(32)}`, undefined],
    ['POST', '/v1/reload', undefined],
    ['POST', '/v1/test', { policy: 'version: 1\ndefault_verdict: allow\n', destination: 'secret.exfil.example:443' }],
  ] as const) {
    const r = await api(proxy, method, path, body === undefined ? {} : { body });
    t.equal(r.status, 401, `${method} ${path} without a token`);
    t.equal(r.json?.error?.code, 'unauthorized');
    t.match(r.json?.error?.message, /needs a developer token/);
    t.match(r.headers.get('www-authenticate'), /^Bearer/);
    t.equal(
      (await api(proxy, method, path, { token: 'guessed', ...(body === undefined ? {} : { body }) })).status,
      401,
      `${method} ${path} with a made-up token`,
    );
  }
  t.equal(proxy.running.registry.size(), 0, 'nothing was registered');
  t.equal(proxy.running.store.current.generation, 1, 'nothing was reloaded');
  const admin = new AdminServer({
    config: proxy.running.config,
    running: proxy.running,
    metrics: proxy.running.metrics,
    resolver: { resolve: async () => ({ addresses: [], cached: false, durationMs: 0 }) },
  });
  await t.rejects(admin.listen('0.0.0.0', 0), /no admin\.tokens configured/);
});

t.test('with auth.users, a registration names a configured user', async (t) => {
  const proxy = await startTestProxy({
    policy: 'version: 1\n',
    config: `admin: {listen: 127.0.0.1:0, tokens: [{name: gw, sha256: ${sha(DEVELOPER)}, role: developer}]}
auth: {users: [{name: team-a, password_sha256: ${sha('pw')}}]}`,
  });
  t.teardown(() => proxy.stop());
  const register = (client: string) =>
    api(proxy, 'POST', '/v1/calls', { token: DEVELOPER, body: { call_id: 'u'.repeat(32), tool: 'fetch', client } });
  const byIp = await register('127.0.0.1');
  t.equal(byIp.status, 400, 'a source IP never identifies a client when users are configured');
  t.match(byIp.json.error.message, /not a proxy user/);
  t.equal((await register('team-b')).status, 400, 'an unknown user');
  t.equal((await register('team-a')).status, 201, 'a configured user');
});

t.test('Host on an IPv6 loopback listener, and DNS rebinding with a real client', async (t) => {
  const proxy = await startTestProxy({ policy: 'version: 1\n', config: 'admin: {listen: "[::1]:0"}' });
  t.teardown(() => proxy.stop());
  const port = (proxy.running.admin?.server.address() as { port: number }).port;
  t.equal((await sendTo('::1', port, 'GET', '/v1/policy')).status, 200, '[::1]:port');
  t.equal((await sendTo('::1', port, 'GET', '/v1/policy', { host: `[0::1]:${port}` })).status, 200, 'another spelling of [::1]');
  t.equal((await sendTo('::1', port, 'GET', '/v1/policy', { host: `localhost:${port}` })).status, 200, 'localhost');
  t.equal((await sendTo('::1', port, 'GET', '/v1/policy', { host: `127.0.0.1:${port}` })).status, 421, 'not its address');
  // curl as a rebinding browser would connect: the attacker's name resolved to the listener.
  const curl = (host: string) =>
    promisify(execFile)('curl', [
      '-s',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code}',
      '--resolve',
      `${host}:${port}:[::1]`,
      `http://${host}:${port}/v1/policy`,
    ]).then((r) => r.stdout);
  t.equal(await curl('evil.example'), '421', 'a rebound name is refused');
  t.equal(await curl('localhost'), '200', 'localhost, through the same client, is served');
});

t.test('a refused registration answers by its cause: 409 clash, 503 registry full', async (t) => {
  const proxy = await startTestProxy({
    policy: 'version: 1\n',
    config: `limits: {max_registered_calls: 2}
admin:
  listen: 127.0.0.1:0
  tokens: [{name: ci, sha256: ${sha(DEVELOPER)}, role: developer}]`,
  });
  t.teardown(() => proxy.stop());
  const register = (callId: string, client: string) =>
    api(proxy, 'POST', '/v1/calls', { token: DEVELOPER, body: { call_id: callId, tool: 'fetch', client } });
  t.equal((await register('a'.repeat(32), 'one')).status, 201);
  const clash = await register('a'.repeat(32), 'two');
  t.match({ status: clash.status, code: clash.json?.error?.code }, { status: 409, code: 'conflict' });
  t.equal((await register('b'.repeat(32), 'two')).status, 201);
  const full = await register('c'.repeat(32), 'three');
  t.match({ status: full.status, code: full.json?.error?.code }, { status: 503, code: 'registry_full' });
  t.equal((await proxy.running.registry.open('three')).length, 0, 'nothing registered past the cap');
});
