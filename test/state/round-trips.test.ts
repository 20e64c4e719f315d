/**
 * What a decision costs in Redis (issue 15's target): one round trip for a call whose decision
 * needs state, none for a call that needs none. Counted by Redis itself (MONITOR lists every
 * command it executes; a script's own commands are left out, only its EVALSHA counts). Two replicas
 * on one Redis: the calls are registered through A and decided through B, so what B reads comes
 * from Redis, not from anything A or B holds in memory. Then the combined read's faults: slow
 * and down, refused `state_unavailable`.
 */
import { createHash } from 'node:crypto';
import t from 'tap';
import { startTestProxyFor } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { getRequest, rawRequest } from '../helpers/raw.js';
import { delayingRelay, FETCH_AFTER_READ_POLICY, monitorRedis, startRedis } from '../helpers/redis.js';
import { missing } from '../helpers/requires.js';
import { startUpstream } from '../helpers/upstream.js';

const skip = missing('redis-server');
const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const GATEWAY = 'gateway-token-0123456789';
const asA = `Proxy-Authorization: Basic ${Buffer.from('team-a:pa').toString('base64')}\r\n`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const FETCH = 'f'.repeat(32);
const READ = 'r'.repeat(32);

const SEQUENCE = FETCH_AFTER_READ_POLICY;
const NO_SEQUENCE = `version: 1
default_verdict: allow
rules:
  - {id: fetch-audit, priority: 1, verdict: allow, tool_name_glob: fetch}
`;

/** What a command the proxy sent is, by its words (the scripts are told apart by their keys). */
function kind(words: string[]): string {
  const [name, , numkeys, key] = words.map((w, i) => (i === 0 ? w.toLowerCase() : w));
  if (name === 'hget' || name === 'hgetall') return 'registrations';
  if (name === 'evalsha' || name === 'eval') {
    if (numkeys === '1' && key?.includes(':client:')) return 'registrations+history';
    if (numkeys === '2' && key?.includes(':hist:')) return 'history';
    if (numkeys === '3' && key?.includes(':hist:')) return 'history write';
  }
  return words.join(' ').slice(0, 80);
}

async function admin(proxy: TestProxy, method: string, path: string, body?: unknown): Promise<number> {
  const port = (proxy.running.admin?.server.address() as { port: number }).port;
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: { authorization: `Bearer ${GATEWAY}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  await res.text();
  return res.status;
}

interface Case {
  readonly name: string;
  readonly trust: 'header' | 'registered';
  readonly policy: string;
  /** Attribution headers of the call decided through B. */
  readonly headers: string;
  /** The commands B's decision sends (reads), in order. */
  readonly reads: readonly string[];
  /** Whether the decided call's history is written (sequence rules keep history). */
  readonly writes: boolean;
  readonly status: number;
}

const cases: Case[] = [
  {
    name: 'trust registered, sequence rules, a call id: lookup and its session history in one script',
    trust: 'registered',
    policy: SEQUENCE,
    headers: `x-mcp-call-id: ${FETCH}\r\n`,
    reads: ['registrations+history'],
    writes: true,
    status: 403,
  },
  {
    name: 'trust registered, sequence rules, no header: the open calls and their histories in one script',
    trust: 'registered',
    policy: SEQUENCE,
    headers: '',
    reads: ['registrations+history'],
    writes: true,
    status: 403,
  },
  {
    name: 'trust header, sequence rules, no attribution header: the open calls and their histories in one script',
    trust: 'header',
    policy: SEQUENCE,
    headers: '',
    reads: ['registrations+history'],
    writes: true,
    status: 403,
  },
  {
    name: 'trust header, sequence rules, attribution headers: the session history alone',
    trust: 'header',
    policy: SEQUENCE,
    headers: 'x-mcp-tool: fetch\r\nx-mcp-session-id: agent-1\r\n',
    reads: ['history'],
    writes: true,
    status: 403,
  },
  {
    name: 'trust registered, no sequence rules, a call id: the lookup alone',
    trust: 'registered',
    policy: NO_SEQUENCE,
    headers: `x-mcp-call-id: ${FETCH}\r\n`,
    reads: ['registrations'],
    writes: false,
    status: 200,
  },
  {
    name: 'trust header, no sequence rules, a tool header: no state needed, nothing sent at all',
    trust: 'header',
    policy: NO_SEQUENCE,
    headers: 'x-mcp-tool: fetch\r\n',
    reads: [],
    writes: false,
    status: 200,
  },
];

for (const c of cases) {
  t.test(c.name, { skip }, async (t) => {
    const redis = await startRedis(t);
    const upstream = await startUpstream();
    t.teardown(() => upstream.close());
    const target = `127.0.0.1:${upstream.port}`;
    const config = [
      `attribution: {trust: ${c.trust}}`,
      `auth: {users: [{name: team-a, password_sha256: ${sha('pa')}}]}`,
      `admin: {listen: "127.0.0.1:0", tokens: [{name: gateway, sha256: ${sha(GATEWAY)}, role: developer}]}`,
      `state: {store: redis, redis_url: "${redis.url}", timeout_ms: 1000}`,
    ].join('\n');
    const a = await startTestProxyFor(t, { policy: c.policy, config });
    const b = await startTestProxyFor(t, { policy: c.policy, config });
    while (!a.running.state.up || !b.running.state.up) await sleep(10);

    // Through A: a read_file in the agent's session (registered, so it is history), then ended;
    // the fetch registered in the same session stays open.
    const call = { client: 'team-a', session_id: 'agent-1' };
    t.equal(await admin(a, 'POST', '/v1/calls', { ...call, call_id: READ, tool: 'read_file' }), 201);
    t.equal(await admin(a, 'DELETE', `/v1/calls/${READ}`), 204);
    t.equal(await admin(a, 'POST', '/v1/calls', { ...call, call_id: FETCH, tool: 'fetch' }), 201);
    await sleep(100);

    const monitor = await monitorRedis(t, redis.port);
    const res = await rawRequest(b.port, getRequest(`http://${target}/`, target, `${asA}${c.headers}`));
    await sleep(150);
    const sent = monitor.since().map(kind);
    t.equal(res.status, c.status, c.status === 403 ? 'the sequence rule fired on what B read' : 'served');
    t.same(
      sent.filter((k) => k !== 'history write'),
      c.reads,
      `the decision's reads: ${c.reads.length === 0 ? 'none' : c.reads.join(', ')}`,
    );
    if (!c.writes) t.same(sent, c.reads, 'and no write either');
    else t.ok(sent.includes('history write'), 'the decided call is recorded (in the background)');
  });
}

t.test('the combined read fails closed: slower than timeout_ms or down, 503 state_unavailable; heals by itself', { skip }, async (t) => {
  const redis = await startRedis(t);
  const relay = await delayingRelay(t, redis.port);
  const upstream = await startUpstream();
  t.teardown(() => upstream.close());
  const target = `127.0.0.1:${upstream.port}`;
  const config = [
    'attribution: {trust: registered}',
    `auth: {users: [{name: team-a, password_sha256: ${sha('pa')}}]}`,
    `admin: {listen: "127.0.0.1:0", tokens: [{name: gateway, sha256: ${sha(GATEWAY)}, role: developer}]}`,
    `state: {store: redis, redis_url: "redis://127.0.0.1:${relay.port}/0", timeout_ms: 150}`,
  ].join('\n');
  const proxy = await startTestProxyFor(t, { policy: SEQUENCE, config });
  while (!proxy.running.state.up) await sleep(10);
  t.equal(await admin(proxy, 'POST', '/v1/calls', { client: 'team-a', session_id: 'agent-1', call_id: FETCH, tool: 'fetch' }), 201);
  const fetchCall = () => rawRequest(proxy.port, getRequest(`http://${target}/`, target, `${asA}x-mcp-call-id: ${FETCH}\r\n`));
  t.equal((await fetchCall()).status, 200, 'no read yet: served');

  relay.delayMs = 1000;
  const started = Date.now();
  const slow = await fetchCall();
  t.equal(slow.status, 503, 'slower than timeout_ms: refused');
  t.ok(Date.now() - started < 900, 'at about timeout_ms');
  t.match(JSON.parse(slow.body).error, { code: 'state_unavailable', reason: 'state_unavailable' });
  t.match(proxy.events('egress.decision').at(-1), { reason: 'state_unavailable', dispatched: false });
  relay.delayMs = 0;
  await sleep(1100);

  await redis.stop();
  while (proxy.running.state.up) await sleep(10);
  const down = await fetchCall();
  t.equal(down.status, 503, 'down: refused');
  t.match(JSON.parse(down.body).error, { code: 'state_unavailable' });
  await redis.restart();
  while (!proxy.running.state.up) await sleep(20);
  // Redis restarted empty: the registration is gone, so the call is unattributed (not allowed).
  const after = await fetchCall();
  t.equal(after.status, 403, 'back: decided again (the registration died with Redis: unattributed)');
  t.match(JSON.parse(after.body).error, { reason: 'unattributed' });
});
