/**
 * POST /v1/test/replay against the real proxy: real traffic recorded, then drafts replayed. It
 * lists exactly the calls whose verdict would change, uses the addresses resolved at the time
 * (no DNS query, no dial), reports what it cannot decide without DNS instead of guessing, and
 * answers an invalid draft with positions. Developer only.
 */
import t from 'tap';
import { adminApi, ADMIN_WITH_TOKENS, DEVELOPER_TOKEN, VIEWER_TOKEN } from '../helpers/admin.js';
import { startDnsServer } from '../helpers/dns-server.js';
import { startTestProxyFor } from '../helpers/proxy.js';
import { getRequest, rawRequest } from '../helpers/raw.js';
import { startUpstream } from '../helpers/upstream.js';

const LIVE = `version: 1
default_verdict: deny
rules:
  - {id: allow-fetch, priority: 10, verdict: allow, tool_name_glob: fetch, egress: {allow: [127.0.0.1]}}
  - {id: deny-bad, priority: 5, verdict: deny, egress: {deny: [bad.example]}}
`;

t.test('replay', async (t) => {
  const upstream = await startUpstream();
  t.teardown(() => upstream.close());
  const dns = await startDnsServer({ 'up.test': { A: ['127.0.0.1'] } });
  t.teardown(() => dns.close());
  const proxy = await startTestProxyFor(t, { policy: LIVE, config: ADMIN_WITH_TOKENS, dns: dns.address });
  const call = async (tool: string, host: string) =>
    (await rawRequest(proxy.port, getRequest(`http://${host}/`, host, `x-mcp-tool: ${tool}\r\n`))).status;
  const up = `127.0.0.1:${upstream.port}`;
  // 1 fetch, allowed by rule; 2 search, refused by default; 3 bad.example, refused by name (no DNS);
  // 4 metadata, refused by the baseline; 5 up.test resolved (127.0.0.1) and allowed.
  t.equal(await call('fetch', up), 200);
  t.equal(await call('search', up), 403);
  t.equal(await call('fetch', 'bad.example:80'), 403);
  t.equal(await call('fetch', '169.254.169.254:80'), 403);
  t.equal(await call('fetch', `up.test:${upstream.port}`), 200);
  const ids = (await proxy.waitForCount('egress.decision', 5)).map((e) => e.conn_id as string);
  t.equal(dns.queriesFor('bad.example').length, 0);
  const replay = (policy: string, token = DEVELOPER_TOKEN, limit?: number) =>
    adminApi(proxy, 'POST', '/v1/test/replay', { token, body: { policy, ...(limit ? { limit } : {}) } });

  t.test('the live policy as the draft changes nothing', async (t) => {
    const res = await replay(LIVE);
    t.equal(res.status, 200, res.text);
    t.equal(res.json.count, 5);
    t.same(res.json.changed, []);
    t.same(res.json.unresolved, []);
    t.same(
      res.json.calls.map((c: { conn_id: string }) => c.conn_id),
      [...ids].reverse(),
      'newest first',
    );
    for (const c of res.json.calls) t.same(c.live, c.draft);
    t.match(res.json.calls.at(-1), {
      tool: 'fetch',
      host: '127.0.0.1',
      port: upstream.port,
      server: '127.0.0.1',
      recorded: { verdict: 'allow', dispatched: true, rule: { id: 'allow-fetch' }, policy_generation: 1 },
    });
    t.match(res.json.live, { generation: 1, sha256: proxy.running.store.current.sha256 });
  });

  t.test('a draft lists exactly the calls whose verdict would change, decided on the recorded addresses', async (t) => {
    const before = dns.queries.length;
    const draft = `version: 1
default_verdict: deny
rules:
  - {id: allow-search, priority: 10, verdict: allow, tool_name_glob: search, egress: {allow: [127.0.0.1]}}
  - {id: no-loopback-for-fetch, priority: 20, verdict: deny, tool_name_glob: fetch, egress: {deny: [127.0.0.0/8]}}
  - {id: allow-fetch, priority: 30, verdict: allow, tool_name_glob: fetch, egress: {allow: [127.0.0.1]}}
`;
    const res = await replay(draft);
    t.equal(res.status, 200, res.text);
    // 1 (fetch, now refused), 2 (search, now allowed), 5 (up.test's recorded 127.0.0.1, now refused).
    t.same(res.json.changed, [ids[4], ids[1], ids[0]]);
    const byId = new Map(res.json.calls.map((c: { conn_id: string }) => [c.conn_id, c]));
    t.match(byId.get(ids[0]), {
      live: { verdict: 'allow', dispatched: true, rule: { id: 'allow-fetch' } },
      draft: { verdict: 'deny', dispatched: false, rule: { id: 'no-loopback-for-fetch' } },
    });
    t.match(byId.get(ids[1]), { live: { verdict: 'deny', reason: 'default' }, draft: { verdict: 'allow', rule: { id: 'allow-search' } } });
    // The draft's fetch rules judge addresses, so it cannot refuse bad.example by name alone, and
    // bad.example was never resolved: unresolved, not guessed.
    t.match(byId.get(ids[2]), { live: { verdict: 'deny', rule: { id: 'deny-bad' } }, draft: null });
    t.same(res.json.unresolved, [ids[2]]);
    t.match(byId.get(ids[3]), { live: { reason: 'ssrf_baseline' }, draft: { reason: 'ssrf_baseline' } });
    t.match(byId.get(ids[4]), { host: 'up.test', draft: { verdict: 'deny', rule: { id: 'no-loopback-for-fetch' } } });
    t.equal(dns.queries.length, before, 'no DNS query');
    t.equal(upstream.requests.length, 2, 'no dial');
  });

  t.test('a call refused by name stays decided when the draft refuses it by name too', async (t) => {
    const res = await replay(
      'version: 1\ndefault_verdict: deny\nrules:\n  - {id: allow-search, priority: 1, verdict: allow, tool_name_glob: search, egress: {allow: [127.0.0.1]}}\n',
    );
    t.match(
      res.json.calls.find((c: { conn_id: string }) => c.conn_id === ids[2]),
      { live: { verdict: 'deny', rule: { id: 'deny-bad' } }, draft: { verdict: 'deny', reason: 'default' } },
    );
    t.same(res.json.unresolved, []);
  });

  t.test('a call refused by name that the draft would not refuse by name is unresolved, not guessed', async (t) => {
    const res = await replay('version: 1\ndefault_verdict: allow\n');
    t.equal(res.status, 200, res.text);
    t.same(res.json.unresolved, [ids[2]]);
    t.match(
      res.json.calls.find((c: { conn_id: string }) => c.conn_id === ids[2]),
      { live: { verdict: 'deny' }, draft: null },
    );
    t.same(res.json.changed, [ids[1]], 'search: refused by default live, allowed by the draft');
    t.equal(dns.queriesFor('bad.example').length, 0, 'bad.example still never asked for');
  });

  t.test('limit takes the most recent calls', async (t) => {
    const res = await replay(LIVE, DEVELOPER_TOKEN, 2);
    t.same(
      res.json.calls.map((c: { conn_id: string }) => c.conn_id),
      [ids[4], ids[3]],
    );
  });

  t.test('an invalid draft: 400 with every problem and its position', async (t) => {
    const res = await replay('version: 1\ndefault_verdict: maybe\nrules:\n  - {priority: 1, verdict: allow, egress: {allow: ["a b"]}}\n');
    t.equal(res.status, 400);
    t.equal(res.json.error.code, 'policy_invalid');
    t.same(
      res.json.error.errors.map((e: string) => /^draft\.yaml:(\d+:\d+): error/.exec(e)?.[1]),
      ['2:18', '4:52'],
    );
  });

  t.test('bad requests and roles', async (t) => {
    t.equal((await replay(LIVE, VIEWER_TOKEN)).status, 403);
    t.equal((await adminApi(proxy, 'POST', '/v1/test/replay', { body: { policy: LIVE } })).status, 401);
    for (const body of [
      {},
      { policy: 1 },
      { policy: LIVE, limit: 0 },
      { policy: LIVE, limit: 1001 },
      { policy: LIVE, limit: 1.5 },
      { policy: LIVE, extra: 1 },
    ]) {
      t.equal(
        (await adminApi(proxy, 'POST', '/v1/test/replay', { token: DEVELOPER_TOKEN, body })).status,
        400,
        JSON.stringify(body).slice(0, 60),
      );
    }
  });
});
