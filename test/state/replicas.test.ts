/**
 * Replicas that decide as one (`state.store: redis`), with a real redis-server: two proxies
 * sharing one Redis (a registration through A attributes a call through B; discovered
 * destinations from both, merged with exact counts under concurrent load), and the faults:
 * Redis stopped mid-run, Redis slow, Redis restarted, a replica killed with SIGKILL.
 */
import { createHash } from 'node:crypto';
import t from 'tap';
import type { Test } from 'tap';
import { startTestProxyFor } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { connectRequest, getRequest, rawRequest } from '../helpers/raw.js';
import { delayingRelay, FETCH_AFTER_READ_POLICY, startRedis } from '../helpers/redis.js';
import { missing } from '../helpers/requires.js';
import { files, serve } from '../helpers/serve-process.js';
import { startUpstream } from '../helpers/upstream.js';

const skip = missing('redis-server');
const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const GATEWAY = 'gateway-token-0123456789';
const basic = (user: string, password: string) => `Proxy-Authorization: Basic ${Buffer.from(`${user}:${password}`).toString('base64')}\r\n`;
const asA = basic('team-a', 'pa');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const registeredConfig = (url: string, extra = '') =>
  [
    'attribution: {trust: registered}',
    `auth: {users: [{name: team-a, password_sha256: ${sha('pa')}}, {name: team-b, password_sha256: ${sha('pb')}}]}`,
    `admin: {listen: "127.0.0.1:0", tokens: [{name: gateway, sha256: ${sha(GATEWAY)}, role: developer}]}`,
    `state: {store: redis, redis_url: "${url}", timeout_ms: 200${extra}}`,
  ].join('\n');

const POLICY = `version: 1
default_verdict: deny
rules:
  - id: fetch-ok
    priority: 1
    tool_name_glob: http_fetch
    verdict: allow
    egress: {allow: [127.0.0.0/8]}
`;

async function admin(proxy: TestProxy | number, method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> {
  const port = typeof proxy === 'number' ? proxy : (proxy.running.admin?.server.address() as { port: number }).port;
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    // A proxy without admin.tokens serves loopback callers as viewers, and refuses any token.
    headers: {
      ...(typeof proxy !== 'number' && proxy.running.config.admin.tokens.length === 0 ? {} : { authorization: `Bearer ${GATEWAY}` }),
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, json };
}

async function until(pred: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await sleep(20);
  }
}

/** Collects unhandled rejections while a test runs (a lost Redis promise); `check` asserts there were none. */
function noUnhandledRejections(t: Test): { check(): void } {
  const seen: unknown[] = [];
  const listener = (reason: unknown) => seen.push(reason);
  process.on('unhandledRejection', listener);
  t.teardown(() => void process.off('unhandledRejection', listener));
  return { check: () => t.same(seen.map(String), [], 'no unhandled rejection') };
}

async function upstreamFor(t: Test) {
  const upstream = await startUpstream();
  t.teardown(() => upstream.close());
  return { upstream, target: `127.0.0.1:${upstream.port}` };
}

t.test('a call registered through replica A attributes a connection through replica B', { skip }, async (t) => {
  const redis = await startRedis(t);
  const { target } = await upstreamFor(t);
  const a = await startTestProxyFor(t, { policy: POLICY, config: registeredConfig(redis.url) });
  const b = await startTestProxyFor(t, { policy: POLICY, config: registeredConfig(redis.url) });
  await until(() => a.running.state.up && b.running.state.up);

  const callId = 'c'.repeat(32);
  t.equal(
    (await admin(a, 'POST', '/v1/calls', { call_id: callId, tool: 'http_fetch', client: 'team-a', session_id: 'sess-1' })).status,
    201,
  );
  // An open tunnel is never closed by the proxy: stop reading after its answer.
  const through = await rawRequest(b.port, connectRequest(target, `${asA}x-mcp-call-id: ${callId}\r\n`), 300);
  t.equal(through.status, 200, 'B knows the call A registered');
  t.match(b.events('egress.decision').at(-1), {
    tool: 'http_fetch',
    call_id: callId,
    session_id: 'sess-1',
    reason: 'rule',
    dispatched: true,
  });
  t.match(b.events('egress.decision').at(-1)?.policy_digest, /^[0-9a-f]{12}$/, 'policy_digest on the decision');
  t.equal(
    b.events('egress.decision').at(-1)?.policy_digest,
    (await admin(a, 'GET', '/v1/policy')).json.sha256.slice(0, 12),
    'the same policy on both replicas',
  );

  t.equal((await admin(b, 'DELETE', `/v1/calls/${callId}`)).status, 204, 'ended through B');
  const after = await rawRequest(a.port, getRequest(`http://${target}/`, target, `${asA}x-mcp-call-id: ${callId}\r\n`));
  t.equal(after.status, 403, 'and A refuses it at once');
  t.match(JSON.parse(after.body).error, { reason: 'unattributed' });

  // A conflict seen across replicas: team-b cannot take team-a's live id through B.
  t.equal((await admin(a, 'POST', '/v1/calls', { call_id: 'd'.repeat(32), tool: 'http_fetch', client: 'team-a' })).status, 201);
  t.equal(
    (await admin(b, 'POST', '/v1/calls', { call_id: 'd'.repeat(32), tool: 'http_fetch', client: 'team-b' })).json.error.code,
    'conflict',
  );
});

t.test('discovered destinations from both replicas, merged with exact counts under concurrent load', { skip }, async (t) => {
  const redis = await startRedis(t);
  const { target, upstream } = await upstreamFor(t);
  const config = `state: {store: redis, redis_url: "${redis.url}"}\nadmin: {listen: "127.0.0.1:0"}`;
  const policy = 'version: 1\ndefault_verdict: allow\nobserve_mode: true\n';
  const a = await startTestProxyFor(t, { policy, config });
  const b = await startTestProxyFor(t, { policy, config });
  await until(() => a.running.state.up && b.running.state.up);
  const perReplica = 40;
  const send = (proxy: TestProxy, tool: string) =>
    rawRequest(proxy.port, getRequest(`http://${target}/`, target, `x-mcp-tool: ${tool}\r\n`));
  const answers = await Promise.all([
    ...Array.from({ length: perReplica }, () => send(a, 'search')),
    ...Array.from({ length: perReplica }, () => send(b, 'search')),
    send(b, 'fetch'),
  ]);
  t.ok(
    answers.every((r) => r.status === 200),
    'all served',
  );
  t.equal(upstream.requests.length, 2 * perReplica + 1);
  const expected = [
    { server: '127.0.0.1', tool: 'fetch', host: '127.0.0.1', port: upstream.port, count: 1 },
    { server: '127.0.0.1', tool: 'search', host: '127.0.0.1', port: upstream.port, count: 2 * perReplica },
  ];
  const listed = async (proxy: TestProxy) =>
    ((await admin(proxy, 'GET', '/v1/discovered')).json.destinations as Array<Record<string, unknown>>)
      .map((e) => ({ server: e.server, tool: e.tool, host: e.host, port: e.port, count: e.count }))
      .sort((x, y) => String(x.tool).localeCompare(String(y.tool)));
  await until(async () => JSON.stringify(await listed(a)) === JSON.stringify(expected));
  t.same(await listed(b), expected, 'both replicas list the same merged counts');
  t.equal(
    a.events('egress.discovered').length + b.events('egress.discovered').length,
    2,
    'egress.discovered once per destination in the fleet',
  );
  const yaml = await fetch(
    `http://127.0.0.1:${(b.running.admin?.server.address() as { port: number }).port}/v1/discovered?format=yaml`,
  ).then((r) => r.text());
  t.match(yaml, /tool_name_glob: search/);
  t.match(yaml, /tool_name_glob: fetch/, 'the draft allow-list covers both halves');
});

t.test('Redis stopped, slow, restarted: state calls refused state_unavailable, others served, heals by itself', { skip }, async (t) => {
  const rejections = noUnhandledRejections(t);
  const redis = await startRedis(t);
  const relay = await delayingRelay(t, redis.port);
  const { target } = await upstreamFor(t);
  const config = `state: {store: redis, redis_url: "redis://127.0.0.1:${relay.port}/0", timeout_ms: 150}\nadmin: {listen: "127.0.0.1:0"}`;
  const proxy = await startTestProxyFor(t, { policy: 'version: 1\ndefault_verdict: allow\n', config });
  await until(() => proxy.running.state.up);
  const metric = async () => /^mcp_egress_state_up (\d)$/m.exec((await admin(proxy, 'GET', '/metrics')).json)?.[1];
  const withHeader = () => rawRequest(proxy.port, getRequest(`http://${target}/`, target, 'x-mcp-tool: fetch\r\n'));
  // No attribution header: the registrations of this client must be read.
  const needsState = () => rawRequest(proxy.port, getRequest(`http://${target}/`, target));

  t.equal((await needsState()).status, 200, 'up: served');
  t.equal(await metric(), '1');
  t.match((await admin(proxy, 'GET', '/readyz')).json, { ready: true, state: 'up', state_store: 'redis' });

  // Slow: answers later than timeout_ms.
  relay.delayMs = 1500;
  const started = Date.now();
  const slow = await needsState();
  t.equal(slow.status, 503, 'slower than timeout_ms: refused');
  t.ok(Date.now() - started < 1200, 'at about timeout_ms, not when Redis answered');
  t.match(JSON.parse(slow.body).error, { code: 'state_unavailable', reason: 'state_unavailable' });
  t.equal(slow.headers['x-egress-error'], 'state_unavailable');
  t.match(proxy.events('egress.decision').at(-1), {
    reason: 'state_unavailable',
    verdict: 'deny',
    dispatched: false,
    pinned_address: null,
  });
  t.equal((await withHeader()).status, 200, 'a call that needs no state is still served');
  relay.delayMs = 0;
  await sleep(1600);
  t.equal((await needsState()).status, 200, 'fast again: served');

  // Stopped mid-run.
  await redis.stop();
  await until(async () => (await metric()) === '0');
  const down = await needsState();
  t.equal(down.status, 503, 'down: refused');
  t.match(JSON.parse(down.body).error, { code: 'state_unavailable' });
  const tunnel = await rawRequest(proxy.port, connectRequest(target));
  t.equal(tunnel.status, 503, 'CONNECT too, answered before any 200');
  t.ok(tunnel.closedByPeer, 'and closed by the proxy');
  t.equal((await withHeader()).status, 200, 'others still served');
  const ready = await admin(proxy, 'GET', '/readyz');
  t.equal(ready.status, 200, 'readiness does not depend on the store');
  t.match(ready.json, { ready: true, state: 'down' });
  t.equal((await admin(proxy, 'GET', '/v1/discovered')).status, 503, 'the merged list cannot be given');

  // Restarted: no proxy restart.
  await redis.restart();
  await until(async () => (await metric()) === '1', 8000);
  t.equal((await needsState()).status, 200, 'healed by itself');
  t.ok(
    proxy.events().some((e) => e.event === 'state.down') && proxy.events().some((e) => e.event === 'state.up'),
    'the loss and the return are logged',
  );
  rejections.check();
});

t.test('registering while the store is down answers 503 state_unavailable', { skip }, async (t) => {
  const rejections = noUnhandledRejections(t);
  const redis = await startRedis(t);
  const proxy = await startTestProxyFor(t, { policy: POLICY, config: registeredConfig(redis.url) });
  await until(() => proxy.running.state.up);
  await redis.stop();
  await until(() => !proxy.running.state.up);
  const r = await admin(proxy, 'POST', '/v1/calls', { call_id: 'e'.repeat(32), tool: 'http_fetch', client: 'team-a' });
  t.equal(r.status, 503);
  t.equal(r.json.error.code, 'state_unavailable');
  t.equal((await admin(proxy, 'DELETE', `/v1/calls/${'e'.repeat(32)}`)).status, 503, 'ending too');
  rejections.check();
});

t.test('a replica killed with SIGKILL: the other keeps deciding with the same state; the password is never logged', { skip }, async (t) => {
  const password = 'pw-Zq8-never-logged';
  const redis = await startRedis(t, { password });
  const { target } = await upstreamFor(t);
  const configText = (name: string) =>
    [
      'listen: 127.0.0.1:0',
      'policy: policy.yaml',
      'baseline: {allow_cidrs: [127.0.0.0/8]}',
      'log: {level: debug}',
      registeredConfig(redis.url),
      `# ${name}`,
    ].join('\n');
  const fa = await files(POLICY, configText('a'));
  const fb = await files(POLICY, configText('b'));
  const env = { MCP_EGRESS_REDIS_PASSWORD: password };
  const a = serve(['--config', fa.config], env);
  const b = serve(['--config', fb.config], env);
  t.teardown(() => {
    a.child.kill('SIGKILL');
    b.child.kill('SIGKILL');
  });
  const portsOf = async (s: ReturnType<typeof serve>) => ({
    proxy: (await s.waitFor((e) => e.event === 'listening' && e.listener === 'proxy', 20_000)).port as number,
    admin: (await s.waitFor((e) => e.event === 'listening' && e.listener === 'admin', 20_000)).port as number,
  });
  const pa = await portsOf(a);
  const pb = await portsOf(b);
  await a.waitFor((e) => e.event === 'state.up', 20_000);
  await b.waitFor((e) => e.event === 'state.up', 20_000);

  const callId = 'k'.repeat(32);
  t.equal(
    (await admin(pa.admin, 'POST', '/v1/calls', { call_id: callId, tool: 'http_fetch', client: 'team-a' })).status,
    201,
    'registered through A',
  );
  a.child.kill('SIGKILL');
  await a.exit;
  const r = await rawRequest(pb.proxy, connectRequest(target, `${asA}x-mcp-call-id: ${callId}\r\n`), 300);
  t.equal(r.status, 200, 'B attributes the call A registered, with A gone');
  await b.waitFor((e) => e.event === 'egress.decision' && e.call_id === callId);
  t.match(
    b.lines.find((e) => e.event === 'state.store'),
    { store: 'redis' },
  );
  const everything = JSON.stringify(a.lines) + a.stderr() + JSON.stringify(b.lines) + b.stderr();
  t.notMatch(everything, new RegExp(password), 'the password appears in no log line');
  b.child.kill('SIGTERM');
  t.equal(await b.exit, 0, 'B stops cleanly');
});

t.test('a sequence rule fires when the read went through replica A and the fetch through replica B', { skip }, async (t) => {
  const redis = await startRedis(t);
  const { target } = await upstreamFor(t);
  const policy = FETCH_AFTER_READ_POLICY;
  const config = `state: {store: redis, redis_url: "${redis.url}"}\nadmin: {listen: "127.0.0.1:0"}`;
  const a = await startTestProxyFor(t, { policy, config });
  const b = await startTestProxyFor(t, { policy, config });
  await until(() => a.running.state.up && b.running.state.up);
  const call = (proxy: TestProxy, tool: string, id: string) =>
    rawRequest(
      proxy.port,
      getRequest(`http://${target}/`, target, `x-mcp-tool: ${tool}\r\nx-mcp-call-id: ${id}\r\nx-mcp-session-id: agent-7\r\n`),
    );
  t.equal((await call(b, 'fetch', 'f0')).status, 200, 'no read yet: the fetch goes out');
  t.equal((await call(a, 'read_file', 'r1')).status, 200, 'the read, through A');
  await until(async () =>
    ((await admin(b, 'GET', '/v1/history?session=agent-7')).json.calls ?? []).some((c: { tool: string }) => c.tool === 'read_file'),
  );
  const refused = await call(b, 'fetch', 'f1');
  t.equal(refused.status, 403, 'the fetch through B is refused');
  t.match(JSON.parse(refused.body).error, { reason: 'rule', rule: { id: 'no-fetch-after-read' } });
  t.match(b.events('egress.decision').at(-1), {
    rule: { id: 'no-fetch-after-read' },
    after: { call_id: 'r1', tool: 'read_file', session_id: 'agent-7' },
  });
});
