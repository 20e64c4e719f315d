/**
 * Announcements on the proxy listener (src/proxy/announce.ts): `POST /mcp-egress/v1/calls` in
 * origin form records a call under the announcer's own client identity (407 rules as for any
 * call), is refused under `trust: registered`, and anything malformed is a 400 that records
 * nothing. The guarded server is the one announcing, so each refusal is also an attack tried.
 */
import { createHash } from 'node:crypto';
import net from 'node:net';
import t from 'tap';
import type { HistoryCall } from '../../src/policy/types.js';
import { historyKey } from '../../src/state/types.js';
import { startTestProxyFor } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { rawRequest } from '../helpers/raw.js';

const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const basic = (user: string, password: string) => `Proxy-Authorization: Basic ${Buffer.from(`${user}:${password}`).toString('base64')}\r\n`;
const SEQUENCE = `version: 1
default_verdict: allow
rules:
  - {id: no-egress-after-read, priority: 1, verdict: deny, after: {tool_name_glob: "read_*", within_seconds: 60}}
`;

function announce(body: string, extra = '', method = 'POST', path = '/mcp-egress/v1/calls', type = 'application/json'): string {
  return `${method} ${path} HTTP/1.1\r\nHost: proxy\r\nContent-Type: ${type}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n${extra}\r\n${body}`;
}

const calls = (proxy: TestProxy, session: string | null, server: string | null) =>
  proxy.running.history.read(historyKey(session, server), Date.now()) as readonly HistoryCall[];

t.test('an announcement is recorded under the announcer and answered 204', async (t) => {
  const proxy = await startTestProxyFor(t, { policy: SEQUENCE });
  const r = await rawRequest(proxy.port, announce(JSON.stringify({ tool: 'read_file', call_id: 'c-1', session_id: 'S' })));
  t.equal(r.status, 204);
  t.match(calls(proxy, 'S', null), [
    { tool: 'read_file', callId: 'c-1', server: '127.0.0.1', sessionId: 'S', host: null, address: null, dispatched: null },
  ]);
  const bare = await rawRequest(proxy.port, announce('{"tool":"get_secret"}', basic('some-label', 'x')));
  t.equal(bare.status, 204, 'without users a Basic user name is the label');
  t.match(
    calls(proxy, null, 'some-label'),
    [{ tool: 'get_secret', callId: null, sessionId: null }],
    'no session: the client identity is the key',
  );
});

t.test('malformed announcements are 400 and record nothing', async (t) => {
  const proxy = await startTestProxyFor(t, { policy: SEQUENCE });
  const cases: Array<[string, string]> = [
    ['GET', announce('', '', 'GET')],
    ['not JSON content', announce('{"tool":"read_file","session_id":"S"}', '', 'POST', '/mcp-egress/v1/calls', 'text/plain')],
    ['broken JSON', announce('{"tool":')],
    ['an array', announce('[{"tool":"read_file","session_id":"S"}]')],
    ['an unknown field', announce('{"tool":"read_file","session_id":"S","server":"victim"}')],
    ['no tool', announce('{"session_id":"S"}')],
    ['a tool that is not a string', announce('{"tool":7,"session_id":"S"}')],
    ['a control character in the tool', announce('{"tool":"read\\u0000file","session_id":"S"}')],
    ['a call id with a space', announce('{"tool":"read_file","call_id":"a b","session_id":"S"}')],
    ['an empty session', announce('{"tool":"read_file","session_id":""}')],
    ['a session that is not a string', announce('{"tool":"read_file","session_id":["S"]}')],
    ['over 4 KiB', announce(JSON.stringify({ tool: 'read_file', session_id: 'S', call_id: 'x'.repeat(256) }) + ' '.repeat(4000))],
    // The user name is the history's `server` (and an earlier call's in decision lines): bounded as a label.
    ['a user name over 256 characters', announce('{"tool":"read_file","session_id":"S"}', basic('u'.repeat(257), 'x'))],
  ];
  for (const [name, request] of cases) {
    const r = await rawRequest(proxy.port, request);
    t.equal(r.status, 400, name);
    t.match(JSON.parse(r.body), { error: { code: 'bad_request', message: /^announcement: / } }, name);
  }
  const big = `{"tool":"read_file","session_id":"S"${' '.repeat(4096)}}`;
  const chunked = `POST /mcp-egress/v1/calls HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${big.length.toString(16)}\r\n${big}\r\n0\r\n\r\n`;
  t.equal((await rawRequest(proxy.port, chunked)).status, 400, 'over 4 KiB without a content-length');
  t.same(calls(proxy, 'S', null), [], 'nothing recorded');
  const other = await rawRequest(proxy.port, announce('{"tool":"read_file","session_id":"S"}', '', 'POST', '/mcp-egress/v1/calls?x=1'));
  t.equal(other.status, 400, 'any other origin-form target is not an announcement');
  t.same(calls(proxy, 'S', null), []);
});

t.test('with users, an announcement needs credentials and is recorded under the user', async (t) => {
  const proxy = await startTestProxyFor(t, { policy: SEQUENCE, config: `auth: {users: [{name: agent, password_sha256: "${sha('pw')}"}]}` });
  const body = '{"tool":"read_file","session_id":"S"}';
  const none = await rawRequest(proxy.port, announce(body));
  t.equal(none.status, 407);
  t.match(none.headers['proxy-authenticate'], /^Basic/);
  t.equal((await rawRequest(proxy.port, announce(body, basic('agent', 'wrong')))).status, 407, 'wrong password');
  t.same(calls(proxy, 'S', null), [], 'nothing recorded');
  t.equal((await rawRequest(proxy.port, announce(body, basic('agent', 'pw')))).status, 204);
  t.match(calls(proxy, 'S', null), [{ server: 'agent', tool: 'read_file' }]);
});

t.test('under trust: registered announcements are refused (only the gateway registers)', async (t) => {
  const proxy = await startTestProxyFor(t, {
    policy: SEQUENCE,
    config: `auth: {users: [{name: agent, password_sha256: "${sha('pw')}"}]}
attribution: {trust: registered}
admin:
  listen: 127.0.0.1:0
  tokens: [{name: gw, sha256: "${sha('developer-token-0123456789')}", role: developer}]`,
  });
  const r = await rawRequest(proxy.port, announce('{"tool":"read_file","session_id":"S"}', basic('agent', 'pw')));
  t.equal(r.status, 403);
  t.equal(r.headers['x-egress-error'], 'announce_not_trusted');
  t.match(JSON.parse(r.body), { error: { code: 'announce_not_trusted' } });
  t.same(calls(proxy, 'S', null), [], 'nothing recorded');
  t.equal((await rawRequest(proxy.port, announce('{"tool":"read_file"}'))).status, 407, 'credentials first, as for any call');
});

t.test('without a sequence clause nothing is kept', async (t) => {
  const proxy = await startTestProxyFor(t, { policy: 'version: 1\ndefault_verdict: allow\n' });
  t.equal(
    (await rawRequest(proxy.port, announce('{"tool":"read_file","session_id":"S"}'))).status,
    204,
    'still answered: the preload need not know the policy',
  );
  t.same(calls(proxy, 'S', null), []);
  t.equal(proxy.running.history.retentionSeconds, 0);
});

t.test('a stalled or trickled announcement body is cut at header_timeout_ms (it holds no slot)', async (t) => {
  const proxy = await startTestProxyFor(t, { policy: SEQUENCE, config: 'limits: {header_timeout_ms: 500}' });
  const head = `POST /mcp-egress/v1/calls HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n`;
  for (const trickle of [false, true]) {
    const started = Date.now();
    const socket = net.connect(proxy.port, '127.0.0.1');
    socket.on('error', () => {});
    socket.write(head + '{"tool":');
    const timer = trickle ? setInterval(() => socket.writable && socket.write(' '), 100) : null;
    await new Promise((resolve) => socket.once('close', resolve));
    if (timer) clearInterval(timer);
    const ms = Date.now() - started;
    t.ok(ms >= 450 && ms < 2500, `${trickle ? 'trickled' : 'stalled'} body: closed after ${ms} ms`);
  }
  t.same(calls(proxy, null, '127.0.0.1'), [], 'nothing recorded');
});
