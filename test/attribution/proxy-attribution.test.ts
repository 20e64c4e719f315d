/** Client identity, proxy credentials, socket tags and trusted (registered) call ids through the proxy. */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import t from 'tap';
import { limitKeyOfSource, sourceAddress } from '../../src/attribution/identity.js';
import { proxyWithUpstream } from '../helpers/proxy.js';
import { connectRequest, getRequest, rawRequest } from '../helpers/raw.js';

const basic = (user: string, password: string) => `Proxy-Authorization: Basic ${Buffer.from(`${user}:${password}`).toString('base64')}\r\n`;
const sha = (s: string) => createHash('sha256').update(s).digest('hex');

const policy = `version: 1
default_verdict: deny
rules:
  - {id: fetch-local, priority: 1, verdict: allow, tool_name_glob: "http_*", server_glob: "team-*"}
  - {id: search-denied, priority: 2, verdict: deny, tool_name_glob: search}
  - {id: everyone-local, priority: 3, verdict: allow, egress: {allow: [127.0.0.0/8]}}
`;

t.test('credentials and identity', async (t) => {
  const { proxy, upstream, target } = await proxyWithUpstream(t, {
    policy,
    config: `auth: {users: [{name: team-a, password_sha256: ${sha('s3cret')}}]}`,
  });
  for (const [name, auth] of [
    ['no credentials', ''],
    ['wrong password', basic('team-a', 'nope')],
    ['unknown user', basic('team-b', 's3cret')],
    ['not Basic', 'Proxy-Authorization: Bearer xyz\r\n'],
  ] as const) {
    for (const request of [connectRequest(target, auth), getRequest(`http://${target}/`, target, auth)]) {
      const r = await rawRequest(proxy.port, request);
      t.equal(r.status, 407, name);
      t.equal(r.headers['proxy-authenticate'], 'Basic realm="mcp-egress-proxy"');
      t.equal(JSON.parse(r.body).error.code, 'proxy_auth_required');
    }
  }
  t.equal(upstream.requests.length, 0, 'nothing was forwarded');
  const ok = await rawRequest(proxy.port, getRequest(`http://${target}/`, target, `${basic('team-a', 's3cret')}x-mcp-tool: http_get\r\n`));
  t.equal(ok.status, 200);
  const seen = upstream.requests[0]?.rawHeaders.map((h) => h.toLowerCase()) ?? [];
  t.notOk(seen.includes('proxy-authorization'), 'credentials are not forwarded');
  const d = await proxy.waitFor((e) => e.event === 'egress.decision' && e.dispatched === true);
  t.match(d, { server: 'team-a', tool: 'http_get', rule: { id: 'fetch-local' } });
  const lines = JSON.stringify(proxy.events());
  t.notMatch(lines, /s3cret|czNjcmV0/, 'the password never reaches a log line');
});

t.test('without users, the Basic user name is a label and the source IP the fallback', async (t) => {
  const { proxy, target } = await proxyWithUpstream(t, { policy });
  await rawRequest(proxy.port, getRequest(`http://${target}/`, target, `${basic('team-x', 'anything')}x-mcp-tool: http_get\r\n`));
  await rawRequest(proxy.port, getRequest(`http://${target}/`, target, 'x-mcp-tool: http_get\r\n'));
  const [labelled, byIp] = proxy.events('egress.decision');
  t.match(labelled, { server: 'team-x', rule: { id: 'fetch-local' } });
  t.match(byIp, { server: '127.0.0.1', rule: { id: 'everyone-local' } });
});

t.test('without users, a user name label is 1 to 256 characters without control characters, else 400', async (t) => {
  const { proxy, upstream, target } = await proxyWithUpstream(t, { policy });
  const longest = `team-${'é'.repeat(251)}`;
  for (const request of [
    connectRequest(target, basic(longest, 'x')),
    getRequest(`http://${target}/`, target, `${basic(longest, 'x')}x-mcp-tool: http_get\r\n`),
  ]) {
    const r = await rawRequest(proxy.port, request, 300);
    t.match(r.raw, /^HTTP\/1\.1 200 /, 'a 256-character user name is a label');
  }
  const decided = proxy.events('egress.decision');
  t.equal(decided.length, 2);
  t.ok(
    decided.every((e) => e.server === longest),
    'and is the server label',
  );
  const forwarded = upstream.requests.length;
  // Red-team F3: an ~11 KB user name made every decision line ~11 KB, evicting the console's feed.
  for (const [name, user] of [
    ['257 characters', `team-${'é'.repeat(252)}`],
    ['about 11 KB', 'x'.repeat(11_000)],
    ['a control character', 'team-a\u001b[2J'],
  ] as const) {
    for (const request of [connectRequest(target, basic(user, 'x')), getRequest(`http://${target}/`, target, basic(user, 'x'))]) {
      const r = await rawRequest(proxy.port, request);
      t.equal(r.status, 400, `${name}: refused`);
      t.match(JSON.parse(r.body).error, {
        code: 'bad_request',
        message: /user name must be 1 to 256 characters without control characters/,
      });
    }
  }
  await new Promise((r) => setTimeout(r, 100));
  t.equal(proxy.events('egress.decision').length, 2, 'no decision line for a refused user name');
  t.equal(upstream.requests.length, forwarded, 'nothing more was forwarded');
  const longestLine = Math.max(...proxy.events().map((e) => JSON.stringify(e).length));
  t.ok(longestLine < 4096, `no event line carries the long name (longest ${longestLine} characters)`);
});

t.test('socket tags: registered calls attribute connections without headers', async (t) => {
  const { proxy, target } = await proxyWithUpstream(t, { policy });
  const { registry } = proxy.running;
  await registry.register({ callId: 'call-1', tool: 'http_fetch', client: 'team-a', sessionId: 'sess-1' });
  const one = await rawRequest(proxy.port, getRequest(`http://${target}/`, target, basic('team-a', 'x')));
  t.equal(one.status, 200);
  t.match(proxy.events('egress.decision').at(-1), {
    tool: 'http_fetch',
    call_id: 'call-1',
    session_id: 'sess-1',
    rule: { id: 'fetch-local' },
  });

  await registry.register({ callId: 'call-2', tool: 'search', client: 'team-a' });
  const both = await rawRequest(proxy.port, connectRequest(target, basic('team-a', 'x')));
  t.equal(both.status, 403, 'two open calls: dispatched only if both would be');
  t.match(JSON.parse(both.body).error, { reason: 'rule', rule: { id: 'search-denied' }, tool: 'search', call_id: 'call-2' });
  t.match(proxy.events('egress.decision').at(-1), { tool: 'search', call_id: 'call-2', dispatched: false });

  await registry.end('call-2');
  const again = await rawRequest(proxy.port, connectRequest(target, basic('team-a', 'x')), 300);
  t.match(again.raw, /^HTTP\/1\.1 200/, 'ending the denied call lifts it');
  const header = await rawRequest(proxy.port, getRequest(`http://${target}/`, target, `${basic('team-a', 'x')}x-mcp-tool: search\r\n`));
  t.equal(header.status, 403, 'under trust: header, a header wins over the registry');
});

/** `trust: registered` needs proxy users and admin tokens (interface.md, the admin API). */
const registeredConfig = [
  'attribution: {trust: registered}',
  `auth: {users: [{name: team-a, password_sha256: ${sha('pa')}}, {name: team-b, password_sha256: ${sha('pb')}}]}`,
  `admin: {listen: "off", tokens: [{name: gateway, sha256: ${sha('gateway-token')}, role: developer}]}`,
].join('\n');
const asA = basic('team-a', 'pa');
const asB = basic('team-b', 'pb');

t.test('trust: registered accepts only call ids the gateway registered for that client', async (t) => {
  const { proxy, upstream, target } = await proxyWithUpstream(t, { policy, config: registeredConfig });
  const { registry } = proxy.running;
  await registry.register({ callId: 'a'.repeat(32), tool: 'http_fetch', client: 'team-a' });
  await registry.register({ callId: 'b'.repeat(32), tool: 'http_fetch', client: 'team-b' });
  await registry.register({ callId: 'c'.repeat(32), tool: 'http_fetch', client: 'team-a', ttlMs: 1 });
  await new Promise((r) => setTimeout(r, 10));

  const good = await rawRequest(
    proxy.port,
    getRequest(`http://${target}/`, target, `${asA}x-mcp-call-id: ${'a'.repeat(32)}\r\nx-mcp-tool: search\r\n`),
  );
  t.equal(good.status, 200, 'registered id accepted');
  t.match(
    proxy.events('egress.decision').at(-1),
    { tool: 'http_fetch', call_id: 'a'.repeat(32) },
    'the tool comes from the registration, not the header',
  );

  for (const [name, callId, auth] of [
    ['forged', 'f'.repeat(32), asA],
    ['expired', 'c'.repeat(32), asA],
    ["another client's", 'b'.repeat(32), asA],
  ] as const) {
    for (const request of [
      connectRequest(target, `${auth}x-mcp-call-id: ${callId}\r\n`),
      getRequest(`http://${target}/`, target, `${auth}x-mcp-call-id: ${callId}\r\n`),
    ]) {
      const r = await rawRequest(proxy.port, request);
      t.equal(r.status, 403, name);
      t.match(JSON.parse(r.body).error, { code: 'firewall_blocked', reason: 'unattributed', rule: null, call_id: callId });
    }
    t.match(proxy.events('egress.decision').at(-1), { reason: 'unattributed', dispatched: false, call_id: callId });
  }
  t.equal(upstream.requests.length, 1);
});

t.test('borrowed identities: under trust: registered a client gets only its own calls', async (t) => {
  const { proxy, upstream, target } = await proxyWithUpstream(t, { policy, config: registeredConfig });
  const { registry } = proxy.running;
  const aCall = 'a'.repeat(32);
  await registry.register({ callId: aCall, tool: 'http_fetch', client: 'team-a', sessionId: 'sess-a' });

  // team-b, authenticated as itself, presents team-a's live call id: refused, nothing sent.
  for (const request of [
    connectRequest(target, `${asB}x-mcp-call-id: ${aCall}\r\n`),
    getRequest(`http://${target}/`, target, `${asB}x-mcp-call-id: ${aCall}\r\n`),
  ]) {
    const r = await rawRequest(proxy.port, request);
    t.equal(r.status, 403, "another client's call id");
    t.match(JSON.parse(r.body).error, { reason: 'unattributed', call_id: aCall, tool: null });
    t.match(proxy.events('egress.decision').at(-1), { server: 'team-b', reason: 'unattributed', dispatched: false });
  }
  // team-b writes team-a's name with its own password: not team-a.
  const spoofed = await rawRequest(proxy.port, connectRequest(target, basic('team-a', 'pb')));
  t.equal(spoofed.status, 407, "writing another user's name is not being that user");

  // No call id: team-b gets no call of team-a's (the audit trail names no borrowed call) ...
  const none = await rawRequest(proxy.port, getRequest(`http://${target}/`, target, asB));
  t.equal(none.status, 200, "dispatched as team-b's own, unattributed call (rule everyone-local)");
  t.match(proxy.events('egress.decision').at(-1), {
    server: 'team-b',
    tool: null,
    call_id: null,
    session_id: null,
    rule: { id: 'everyone-local' },
  });
  // ... while team-a, with no call id, gets every open call of its own (the socket tag).
  const own = await rawRequest(proxy.port, getRequest(`http://${target}/`, target, asA));
  t.equal(own.status, 200);
  t.match(proxy.events('egress.decision').at(-1), {
    server: 'team-a',
    tool: 'http_fetch',
    call_id: aCall,
    session_id: 'sess-a',
    rule: { id: 'fetch-local' },
  });
  t.equal(upstream.requests.length, 2);
});

t.test('under trust: registered the session comes only from the registration, never from the header', async (t) => {
  const { proxy, target } = await proxyWithUpstream(t, { policy, config: registeredConfig });
  const { registry } = proxy.running;
  await registry.register({ callId: 'a'.repeat(32), tool: 'http_fetch', client: 'team-a' });
  await registry.register({ callId: 'b'.repeat(32), tool: 'http_fetch', client: 'team-a', sessionId: 'agent-1' });
  // A server writing a victim's session id would record its calls into that session's history.
  for (const [callId, session] of [
    ['a'.repeat(32), null],
    ['b'.repeat(32), 'agent-1'],
  ] as const) {
    const r = await rawRequest(
      proxy.port,
      getRequest(`http://${target}/`, target, `${asA}x-mcp-call-id: ${callId}\r\nx-mcp-session-id: victim-session\r\n`),
    );
    t.equal(r.status, 200);
    t.match(
      proxy.events('egress.decision').at(-1),
      { call_id: callId, session_id: session },
      `registered with session ${session}: the header's is ignored`,
    );
  }
  const none = await rawRequest(proxy.port, getRequest(`http://${target}/`, target, `${asB}x-mcp-session-id: victim-session\r\n`));
  t.equal(none.status, 200);
  t.match(proxy.events('egress.decision').at(-1), { server: 'team-b', call_id: null, session_id: null }, 'no call id: no session either');
});

/** Opens a CONNECT tunnel through the proxy on a raw socket; the answer's status line and the socket. */
async function openTunnel(
  t: { teardown(fn: () => unknown): void },
  port: number,
  request: string,
  localAddress?: string,
): Promise<{ status: string; socket: Socket }> {
  const socket = connect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) });
  socket.on('error', () => {});
  t.teardown(() => socket.destroy());
  await once(socket, 'connect');
  socket.write(request);
  const [first] = (await once(socket, 'data')) as [Buffer];
  return { status: first.toString('latin1').split('\r\n')[0] as string, socket };
}

t.test('without users, max_tunnels_per_client counts per source address, whatever user name is written', async (t) => {
  const { proxy, target } = await proxyWithUpstream(t, { policy, config: 'limits: {max_tunnels_per_client: 2}' });
  t.match((await openTunnel(t, proxy.port, connectRequest(target, basic('team-a', 'x')))).status, /^HTTP\/1\.1 200/);
  t.match((await openTunnel(t, proxy.port, connectRequest(target, basic('team-b', 'x')))).status, /^HTTP\/1\.1 200/);
  for (const [name, auth] of [
    ['a third user name', basic('team-c', 'x')],
    ['no user name', ''],
  ] as const) {
    const r = await rawRequest(proxy.port, connectRequest(target, auth));
    t.equal(r.status, 429, `${name}: refused, the source already has two tunnels`);
    t.match(JSON.parse(r.body).error, { code: 'too_many_tunnels', message: /source address 127\.0\.0\.1 has 2 open tunnels/ });
  }
  t.match(proxy.events().filter((e) => e.code === 'too_many_tunnels')[0], { server: 'team-c', limit_key: '127.0.0.1', open: 2 });
});

t.test('without users, every loopback source address shares one allowance (red team 27 F2)', async (t) => {
  const { proxy, target } = await proxyWithUpstream(t, { policy, config: 'limits: {max_tunnels_per_client: 2}' });
  // A client on the proxy's host may bind any of 127.0.0.0/8 as its source address.
  const from = async (localAddress: string) => (await openTunnel(t, proxy.port, connectRequest(target, ''), localAddress)).status;
  t.match(await from('127.0.0.1'), /^HTTP\/1\.1 200/);
  t.match(await from('127.0.0.2'), /^HTTP\/1\.1 200/);
  // So may it bind any other address of the host (these are on the test namespace's lo; red team 28).
  for (const address of ['127.0.0.3', '127.9.9.9', '127.0.0.1', '93.184.216.34', '10.1.2.3']) {
    t.match(await from(address), /^HTTP\/1\.1 429/, `from ${address}: refused, this host already has two tunnels`);
  }
  t.match(proxy.events().filter((e) => e.code === 'too_many_tunnels')[0], { server: '127.0.0.3', limit_key: '127.0.0.1', open: 2 });
});

t.test('the limit key of a source address', async (t) => {
  for (const [remote, key] of [
    ['127.0.0.1', '127.0.0.1'],
    ['127.200.1.9', '127.0.0.1'],
    ['::ffff:127.0.0.2', '127.0.0.1'],
    ['::1', '127.0.0.1'],
    ['10.0.0.7', '10.0.0.7'],
    ['::ffff:10.0.0.7', '10.0.0.7'],
    ['2001:db8::1', '2001:db8::1'],
    ['::127.0.0.1', '::127.0.0.1'],
    // Addresses of this host (the test namespace's lo holds them): a local client may bind them.
    ['93.184.216.34', '127.0.0.1'],
    ['::ffff:93.184.216.35', '127.0.0.1'],
    ['2606:4700::1111', '127.0.0.1'],
    ['2606:4700::1111%lo', '127.0.0.1'],
    ['93.184.216.36', '93.184.216.36'],
  ] as const) {
    t.equal(limitKeyOfSource(sourceAddress(remote)), key, remote);
  }
});

t.test('with users, max_tunnels_per_client counts per authenticated user', async (t) => {
  const users = `auth: {users: [{name: team-a, password_sha256: ${sha('pa')}}, {name: team-b, password_sha256: ${sha('pb')}}]}`;
  const { proxy, target } = await proxyWithUpstream(t, { policy, config: `${users}\nlimits: {max_tunnels_per_client: 1}` });
  t.match((await openTunnel(t, proxy.port, connectRequest(target, basic('team-a', 'pa')))).status, /^HTTP\/1\.1 200/);
  t.match(
    (await openTunnel(t, proxy.port, connectRequest(target, basic('team-b', 'pb')))).status,
    /^HTTP\/1\.1 200/,
    'another user from the same address has its own allowance',
  );
  const r = await rawRequest(proxy.port, connectRequest(target, basic('team-a', 'pa')));
  t.equal(r.status, 429);
  t.match(JSON.parse(r.body).error, { code: 'too_many_tunnels', message: /client team-a has 1 open tunnels/ });
});
