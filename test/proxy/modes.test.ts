/** Shadow, audit and observe modes through the real proxy. */
import t from 'tap';
import { proxyWithUpstream } from '../helpers/proxy.js';
import { connectRequest, getRequest, rawRequest } from '../helpers/raw.js';

t.test('shadow mode dispatches would-be refusals and says so', async (t) => {
  const { proxy, upstream } = await proxyWithUpstream(t, {
    policy: `version: 1
shadow_mode: true
rules:
  - {id: deny-upstream, priority: 1, label: Deny the test upstream, verdict: deny, egress: {deny: [127.0.0.1]}}
`,
  });
  const r = await rawRequest(
    proxy.port,
    getRequest(`http://127.0.0.1:${upstream.port}/shadow`, `127.0.0.1:${upstream.port}`, 'x-mcp-tool: fetch\r\n'),
  );
  t.equal(r.status, 200, 'dispatched');
  t.equal(upstream.requests.length, 1);
  const d = await proxy.waitFor((e) => e.event === 'egress.decision');
  t.match(d, {
    verdict: 'deny',
    dispatched: true,
    shadow: true,
    reason: 'rule',
    rule: { id: 'deny-upstream' },
    pinned_address: '127.0.0.1',
  });
  t.match(d.msg, /^\[shadow\] would deny 127\.0\.0\.1:\d+ \(rule deny-upstream\)$/);
  const tunnel = await rawRequest(proxy.port, connectRequest(`127.0.0.1:${upstream.port}`), 500);
  t.match(tunnel.raw, /^HTTP\/1\.1 200 Connection Established/);
});

t.test('audit dispatches and records the call', async (t) => {
  const { proxy, upstream } = await proxyWithUpstream(t, {
    policy: `version: 1
rules:
  - {id: audit-local, priority: 1, verdict: audit, egress: {deny: [127.0.0.0/8]}}
`,
  });
  const r = await rawRequest(proxy.port, getRequest(`http://127.0.0.1:${upstream.port}/audit`, `127.0.0.1:${upstream.port}`));
  t.equal(r.status, 200);
  const d = await proxy.waitFor((e) => e.event === 'egress.decision');
  t.match(d, { verdict: 'audit', dispatched: true, shadow: false, reason: 'rule', rule: { id: 'audit-local' } });
  t.match(d.msg, /^audit 127\.0\.0\.1:\d+ \(rule audit-local\)$/);
});

t.test('observe mode records uncovered destinations once each', async (t) => {
  const { proxy, upstream } = await proxyWithUpstream(t, {
    policy: `version: 1
default_verdict: deny
observe_mode: true
rules:
  - {id: covered, priority: 1, verdict: allow, tool_name_glob: covered_tool}
`,
  });
  const url = `http://127.0.0.1:${upstream.port}/`;
  const host = `127.0.0.1:${upstream.port}`;
  for (const tool of ['search', 'search', 'fetch', 'covered_tool']) {
    await rawRequest(proxy.port, getRequest(url, host, `x-mcp-tool: ${tool}\r\n`));
  }
  const refusedByDefault = await rawRequest(proxy.port, getRequest(url, host, 'x-mcp-tool: search\r\n'));
  t.equal(refusedByDefault.status, 403, 'under default deny an uncovered call is refused and recorded');
  const discovered = proxy.events('egress.discovered');
  t.same(
    discovered.map((e) => [e.tool, e.host, e.port, e.server]),
    [
      ['search', '127.0.0.1', upstream.port, '127.0.0.1'],
      ['fetch', '127.0.0.1', upstream.port, '127.0.0.1'],
    ],
  );
  const list = await proxy.running.discovered.list();
  t.match(list, [
    { tool: 'search', count: 3 },
    { tool: 'fetch', count: 1 },
  ]);
  t.ok(list.every((e) => typeof e.first_seen === 'string' && typeof e.last_seen === 'string'));
  t.equal(list.length, 2, 'a call a rule covered is not recorded');
});
