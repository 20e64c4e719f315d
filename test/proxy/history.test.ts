/**
 * Session history in the live proxy: the data path records every call it decides (CONNECT and
 * plain HTTP, dispatched or refused, with the address dialled) and decides sequence rules with
 * it; a history that cannot be read refuses the call (503 `state_unavailable`, fail closed);
 * registrations are history; retention follows reloads; `GET /v1/history` and `POST /v1/test`
 * with `session_id` show the live history. Each refusal is checked at the trap: nothing sent.
 */
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import t from 'tap';
import type { HistoryCall } from '../../src/policy/types.js';
import { historyKey } from '../../src/state/types.js';
import type { HistoryStore } from '../../src/state/types.js';
import { MemoryHistoryStore } from '../../src/state/history.js';
import { api } from '../helpers/admin.js';
import { proxyWithUpstream, startTestProxyFor } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { connectRequest, getRequest, rawRequest } from '../helpers/raw.js';
import { startUpstream } from '../helpers/upstream.js';

const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const DEVELOPER = 'developer-token-0123456789';
const VIEWER = 'viewer-token-0123456789';
const ADMIN = `admin:
  listen: 127.0.0.1:0
  tokens:
    - {name: dash, sha256: ${sha(VIEWER)}, role: viewer}
    - {name: ci, sha256: ${sha(DEVELOPER)}, role: developer}`;

const SEQUENCE = `version: 1
default_verdict: allow
rules:
  - {id: no-egress-after-read, priority: 1, label: No egress after a read, verdict: deny, after: {tool_name_glob: "read_*", within_seconds: 60}}
`;
const attributed = (tool: string, session: string | null, callId: string) =>
  `x-mcp-tool: ${tool}\r\nx-mcp-call-id: ${callId}\r\n${session ? `x-mcp-session-id: ${session}\r\n` : ''}`;
const liveHistory = (proxy: TestProxy, session: string | null, server: string | null) =>
  proxy.running.history.read(historyKey(session, server), Date.now()) as readonly HistoryCall[];

t.test('a fetch right after a read in the same session is refused by the sequence rule; other sessions are not', async (t) => {
  const { proxy, upstream, target } = await proxyWithUpstream(t, { policy: SEQUENCE, config: ADMIN });
  const url = `http://${target}/`;
  // The read's own egress: allowed (a call does not follow itself), and recorded.
  const read = await rawRequest(proxy.port, getRequest(url, target, attributed('read_file', 'S', 'r-1')));
  t.equal(read.status, 200, "the read's own egress is not after itself");
  for (const request of [
    getRequest(url, target, attributed('fetch', 'S', 'f-1')),
    connectRequest(target, attributed('fetch', 'S', 'f-2')),
  ]) {
    const r = await rawRequest(proxy.port, request);
    t.equal(r.status, 403);
    t.equal(r.headers['x-egress-rule'], 'no-egress-after-read');
    const error = JSON.parse(r.body).error;
    t.match(error, { code: 'firewall_blocked', reason: 'rule', rule: { id: 'no-egress-after-read' } });
    t.match(error.message, /refused by rule no-egress-after-read \(No egress after a read\) after an earlier read_file call [\d.]+ s ago/);
  }
  t.equal(upstream.requests.length, 1, 'only the read reached the upstream');
  const decisions = await proxy.waitForCount('egress.decision', 3);
  const digest = sha(await readFile(proxy.policyFile, 'utf8')).slice(0, 12);
  t.match(decisions[1], {
    reason: 'rule',
    dispatched: false,
    after: { call_id: 'r-1', tool: 'read_file', server: '127.0.0.1', session_id: 'S', host: '127.0.0.1' },
    policy_digest: digest,
  });
  t.match(decisions[1]?.msg, /^deny 127\.0\.0\.1:\d+ \(rule no-egress-after-read after read_file [\d.]+ s ago\)$/);
  t.match(decisions[0], { after: null, policy_digest: digest });
  t.equal(typeof (decisions[1]?.after as { seconds_ago: number }).seconds_ago, 'number');

  const other = await rawRequest(proxy.port, getRequest(url, target, attributed('fetch', 'T', 'f-3')));
  t.equal(other.status, 200, 'another session is not affected');
  const noSession = await rawRequest(proxy.port, getRequest(url, target, attributed('fetch', null, 'f-4')));
  t.equal(
    noSession.status,
    403,
    "no session (a child process of the server): the client identity's history holds the server's read too (state/client-copies.ts)",
  );

  // What was recorded: every decided call, refused ones too, with the address dialled.
  const h = await api(proxy, 'GET', '/v1/history?session=S', { token: VIEWER });
  t.equal(h.status, 200);
  t.equal(h.json.key, 'session:S');
  t.match(h.json.calls, [
    { tool: 'fetch', call_id: 'f-2', server: '127.0.0.1', session_id: 'S', host: '127.0.0.1', address: null, dispatched: false },
    { tool: 'fetch', call_id: 'f-1', host: '127.0.0.1', address: null, dispatched: false },
    { tool: 'read_file', call_id: 'r-1', host: '127.0.0.1', address: '127.0.0.1', dispatched: true },
  ]);
  t.match(h.json.calls[0].at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  const byServer = await api(proxy, 'GET', '/v1/history?server=127.0.0.1', { token: VIEWER });
  t.match(byServer.json, {
    key: 'server:127.0.0.1',
    calls: [
      { call_id: 'f-4', dispatched: false, address: null, session_id: null },
      { call_id: 'f-3', dispatched: true, address: '127.0.0.1', session_id: null },
    ],
  });
  t.ok(
    (byServer.json.calls as Array<{ call_id: string }>).some((c) => c.call_id === 'r-1'),
    "the session's read is in the client identity's history too",
  );
});

t.test('hosts: only a dispatched leg to a listed source counts, whichever of the call legs it was', async (t) => {
  const corp = await startUpstream();
  const upstream = await startUpstream();
  t.teardown(() => Promise.all([corp.close(), upstream.close()]));
  const target = `127.0.0.1:${upstream.port}`;
  const proxy = await startTestProxyFor(t, {
    policy: `version: 1
default_verdict: allow
rules:
  - {id: refuse-corp-2, priority: 1, verdict: deny, ports: [${corp.port}], egress: {deny: [127.0.0.2]}}
  - {id: no-egress-after-corp, priority: 2, verdict: deny, ports: [${upstream.port}], after: {hosts: ["127.0.0.1"], within_seconds: 60}}
`,
    config: 'baseline: {allow_cidrs: [127.0.0.0/8]}',
  });
  // A refused leg to a source read nothing: no effect.
  t.equal((await rawRequest(proxy.port, connectRequest(`127.0.0.2:${corp.port}`, attributed('fetch', 'S', 'c-1')))).status, 403);
  t.equal(
    (await rawRequest(proxy.port, getRequest(`http://${target}/`, target, attributed('fetch', 'S', 'c-2')))).status,
    200,
    'after a refused leg: allowed',
  );
  // One call id, three legs: the source between two refused ones. The source leg must count.
  t.equal(
    (await rawRequest(proxy.port, getRequest(`http://127.0.0.2:${corp.port}/`, `127.0.0.2:${corp.port}`, attributed('fetch', 'S', 'c-3'))))
      .status,
    403,
  );
  t.equal(
    (await rawRequest(proxy.port, getRequest(`http://127.0.0.1:${corp.port}/`, `127.0.0.1:${corp.port}`, attributed('fetch', 'S', 'c-3'))))
      .status,
    200,
  );
  t.equal(
    (await rawRequest(proxy.port, getRequest(`http://127.0.0.2:${corp.port}/`, `127.0.0.2:${corp.port}`, attributed('fetch', 'S', 'c-3'))))
      .status,
    403,
  );
  const r = await rawRequest(proxy.port, getRequest(`http://${target}/`, target, attributed('fetch', 'S', 'c-4')));
  t.equal(r.status, 403, 'a later call after a dispatched leg to the source: refused');
  t.match(proxy.events('egress.decision').at(-1), { rule: { id: 'no-egress-after-corp' }, after: { call_id: 'c-3', host: '127.0.0.1' } });
  t.equal(upstream.requests.length, 1);
});

t.test('a history that cannot be read refuses the call: 503 state_unavailable, nothing sent', async (t) => {
  const { proxy, upstream, target } = await proxyWithUpstream(t, { policy: SEQUENCE });
  const store = proxy.running.history as MemoryHistoryStore;
  const now = Date.now();
  for (let i = 0; i <= 1024; i++)
    store.record({
      at: now,
      tool: 'noise',
      callId: `n-${i}`,
      server: '127.0.0.1',
      sessionId: 'flooded',
      host: null,
      address: null,
      dispatched: null,
    });
  for (const request of [
    getRequest(`http://${target}/`, target, attributed('fetch', 'flooded', 'f-1')),
    connectRequest(target, attributed('fetch', 'flooded', 'f-2')),
  ]) {
    const r = await rawRequest(proxy.port, request);
    t.equal(r.status, 503);
    t.match(JSON.parse(r.body).error, {
      code: 'state_unavailable',
      reason: 'state_unavailable',
      rule: null,
      tool: 'fetch',
      destination: { host: '127.0.0.1' },
    });
  }
  t.match(proxy.events('egress.decision').at(-1), {
    reason: 'state_unavailable',
    verdict: 'deny',
    dispatched: false,
    session_id: 'flooded',
    policy_digest: /^[0-9a-f]{12}$/,
  });
  t.equal(upstream.requests.length, 0, 'nothing reached the upstream');
  t.equal(
    (await rawRequest(proxy.port, getRequest(`http://${target}/`, target, attributed('fetch', 'other', 'f-3')))).status,
    200,
    'other keys decide as usual',
  );
});

/** A shared store's shape: reads answer with a promise (Redis), which may reject. */
class AsyncStore implements HistoryStore {
  readonly inner = new MemoryHistoryStore();
  failing = false;
  record(call: HistoryCall): void {
    this.inner.record(call);
  }
  read(key: string, now: number): Promise<readonly HistoryCall[] | null> {
    return this.failing ? Promise.reject(new Error('store down')) : Promise.resolve(this.inner.read(key, now));
  }
  setRetention(seconds: number): void {
    this.inner.setRetention(seconds);
  }
  get retentionSeconds(): number {
    return this.inner.retentionSeconds;
  }
}

t.test('a store that answers with promises: decided the same; a rejected read refuses 503', async (t) => {
  const store = new AsyncStore();
  const { proxy, upstream, target } = await proxyWithUpstream(t, { policy: SEQUENCE, start: { history: store } });
  const url = `http://${target}/`;
  t.equal((await rawRequest(proxy.port, getRequest(url, target, attributed('read_file', 'S', 'r-1')))).status, 200);
  t.equal(
    (await rawRequest(proxy.port, getRequest(url, target, attributed('fetch', 'S', 'f-1')))).status,
    403,
    'the read, read through a promise, refuses the fetch',
  );
  store.failing = true;
  const r = await rawRequest(proxy.port, getRequest(url, target, attributed('fetch', 'T', 'f-2')));
  t.equal(r.status, 503);
  t.match(JSON.parse(r.body).error, { code: 'state_unavailable' });
  t.equal(upstream.requests.length, 1);
  // Without a sequence clause the store is not read at all: nothing to fail.
  await writeFile(proxy.policyFile, 'version: 1\ndefault_verdict: allow\n');
  t.ok(await proxy.running.reload('test'));
  t.equal((await rawRequest(proxy.port, getRequest(url, target, attributed('fetch', 'T', 'f-3')))).status, 200);
});

t.test('retention follows the serving policy: none kept without sequence clauses, dropped on reload', async (t) => {
  const { proxy, target } = await proxyWithUpstream(t, { policy: 'version: 1\ndefault_verdict: allow\n' });
  const url = `http://${target}/`;
  t.equal(proxy.running.history.retentionSeconds, 0);
  await rawRequest(proxy.port, getRequest(url, target, attributed('read_file', 'S', 'r-1')));
  await writeFile(proxy.policyFile, SEQUENCE);
  t.ok(await proxy.running.reload('test'));
  t.equal(proxy.running.history.retentionSeconds, 60);
  t.same(liveHistory(proxy, 'S', null), [], 'nothing was kept before the clause was loaded');
  t.equal(
    (await rawRequest(proxy.port, getRequest(url, target, attributed('fetch', 'S', 'f-1')))).status,
    200,
    'a clause applies from when it is loaded',
  );
  await rawRequest(proxy.port, getRequest(url, target, attributed('read_file', 'S', 'r-2')));
  t.equal((await rawRequest(proxy.port, getRequest(url, target, attributed('fetch', 'S', 'f-2')))).status, 403);
  await writeFile(proxy.policyFile, 'version: 1\ndefault_verdict: allow\n');
  t.ok(await proxy.running.reload('test'));
  t.equal(proxy.running.history.retentionSeconds, 0);
  t.same(liveHistory(proxy, 'S', null), [], 'no clause left: history dropped');
});

t.test('registrations are history: a read on one server refuses a fetch on another in the same agent session', async (t) => {
  const users = `auth:
  users:
    - {name: reader, password_sha256: "${sha('pr')}"}
    - {name: fetcher, password_sha256: "${sha('pf')}"}
attribution: {trust: registered}
${ADMIN}`;
  const { proxy, upstream, target } = await proxyWithUpstream(t, { policy: SEQUENCE, config: users });
  const asFetcher = `Proxy-Authorization: Basic ${Buffer.from('fetcher:pf').toString('base64')}\r\n`;
  const register = (callId: string, tool: string, client: string, session: string) =>
    api(proxy, 'POST', '/v1/calls', { token: DEVELOPER, body: { call_id: callId, tool, client, session_id: session } });
  t.equal((await register('a'.repeat(32), 'read_file', 'reader', 'agent-1')).status, 201);
  t.equal((await register('b'.repeat(32), 'fetch', 'fetcher', 'agent-1')).status, 201);
  t.equal((await register('c'.repeat(32), 'fetch', 'fetcher', 'agent-2')).status, 201);
  const h = await api(proxy, 'GET', '/v1/history?session=agent-1', { token: VIEWER });
  t.match(h.json.calls, [
    { tool: 'fetch', server: 'fetcher' },
    { tool: 'read_file', server: 'reader', call_id: 'a'.repeat(32), host: null, address: null, dispatched: null },
  ]);

  const refused = await rawRequest(
    proxy.port,
    getRequest(`http://${target}/`, target, `${asFetcher}x-mcp-call-id: ${'b'.repeat(32)}\r\nx-mcp-session-id: agent-2\r\n`),
  );
  t.equal(refused.status, 403, "the reader's registered read refuses the fetcher's fetch (the header's session is ignored)");
  t.match(proxy.events('egress.decision').at(-1), { after: { tool: 'read_file', server: 'reader', session_id: 'agent-1', host: null } });
  const other = await rawRequest(proxy.port, getRequest(`http://${target}/`, target, `${asFetcher}x-mcp-call-id: ${'c'.repeat(32)}\r\n`));
  t.equal(other.status, 200, 'another agent session');
  t.equal(upstream.requests.length, 1);
  t.match(
    (await api(proxy, 'GET', '/v1/history?session=agent-2', { token: VIEWER })).json.calls,
    [{ call_id: 'c'.repeat(32), tool: 'fetch', dispatched: true }],
    'a registered call that connects is one record',
  );

  // POST /v1/test with session_id and no history: the live history.
  const dry = await api(proxy, 'POST', '/v1/test', {
    token: DEVELOPER,
    body: { destination: `http://${target}/`, tool: 'fetch', server: 'fetcher', session_id: 'agent-1' },
  });
  t.equal(dry.status, 200);
  t.match(dry.json, {
    verdict: 'deny',
    dispatched: false,
    rule: { id: 'no-egress-after-read' },
    after: { tool: 'read_file', server: 'reader' },
  });
  const fresh = await api(proxy, 'POST', '/v1/test', {
    token: DEVELOPER,
    body: { destination: `http://${target}/`, tool: 'fetch', server: 'fetcher', session_id: 'agent-9' },
  });
  t.match(fresh.json, { verdict: 'allow', after: null });
  const explicit = await api(proxy, 'POST', '/v1/test', {
    token: DEVELOPER,
    body: { destination: `http://${target}/`, tool: 'fetch', session_id: 'agent-1', history: [] },
  });
  t.match(explicit.json, { verdict: 'allow', after: null }, 'an explicit history is exactly what the decision sees');
});

t.test('GET /v1/history: one of session or server, strictly; viewer', async (t) => {
  const proxy = await startTestProxyFor(t, { policy: SEQUENCE, config: ADMIN });
  proxy.running.history.record({
    at: Date.now(),
    tool: 'read_file',
    callId: null,
    server: '::1',
    sessionId: null,
    host: null,
    address: null,
    dispatched: null,
  });
  for (const query of [
    '',
    '?session=a&server=b',
    '?session=',
    '?server=',
    '?session=a&session=b',
    '?sessions=a',
    '?session=a%00b',
    `?session=${'x'.repeat(257)}`,
  ]) {
    const r = await api(proxy, 'GET', `/v1/history${query}`, { token: VIEWER });
    t.equal(r.status, 400, `'${query.slice(0, 40)}'`);
    t.equal(r.json?.error?.code, 'bad_request');
  }
  t.equal((await api(proxy, 'GET', '/v1/history?session=a')).status, 401, 'a token is needed (tokens are configured)');
  t.equal((await api(proxy, 'POST', '/v1/history?session=a', { token: DEVELOPER, body: {} })).status, 405);
  const v6 = await api(proxy, 'GET', '/v1/history?server=0:0:0:0:0:0:0:1', { token: VIEWER });
  t.match(
    v6.json,
    { key: 'server:::1', calls: [{ tool: 'read_file', server: '::1', session_id: null }] },
    'an IP is canonical, as the data path names clients',
  );
  (proxy.running.history as MemoryHistoryStore).setRetention(0);
  t.same((await api(proxy, 'GET', '/v1/history?session=a', { token: VIEWER })).json, { key: 'session:a', calls: [] });
});
