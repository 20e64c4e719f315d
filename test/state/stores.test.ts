/**
 * The memory and the Redis stores answer the same: one table of operations on registered calls
 * and on discovered destinations, run against each (Redis: a real redis-server), then the Redis
 * session history against its contract, and the Redis stores' own promises (caps across
 * replicas, exact counts under concurrency, fail closed, one round trip per read).
 */
import t from 'tap';
import type { Test } from 'tap';
import { dryRun } from '../../src/decide/dry-run.js';
import { parseIpLiteral } from '../../src/net/address.js';
import { compilePolicy } from '../../src/policy/compile.js';
import { parsePolicy } from '../../src/policy/schema.js';
import type { HistoryCall } from '../../src/policy/types.js';
import { createState } from '../../src/state/create-state.js';
import type { State } from '../../src/state/create-state.js';
import { RedisConnection } from '../../src/state/redis/connection.js';
import { RedisCallStore } from '../../src/state/redis/redis-calls.js';
import { MAX_UNRELIABLE_KEYS, RedisHistoryStore } from '../../src/state/redis/redis-history.js';
import { historyKey, StateUnavailableError } from '../../src/state/types.js';
import type { CallStore, DiscoveredDestination, RegistrationsWithHistories } from '../../src/state/types.js';
import { missing } from '../helpers/requires.js';
import { delayingRelay, startRedis } from '../helpers/redis.js';
import { TLS } from '../helpers/upstream.js';

type Step = (calls: CallStore) => Promise<unknown>;
const reg = (callId: string, client: string, extra: { tool?: string; sessionId?: string | null; ttlMs?: number } = {}) => ({
  callId,
  client,
  tool: extra.tool ?? 'fetch',
  sessionId: extra.sessionId,
  ttlMs: extra.ttlMs,
});
const outcome = (r: unknown) =>
  r && typeof r === 'object' && 'code' in r ? (r as { code: string }).code : r && typeof r === 'object' && 'callId' in r ? 'ok' : r;
const ids = (calls: Array<{ callId: string }>) => calls.map((c) => c.callId).sort();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** [what, step, expected answer]: run in order against a fresh store with per-client cap 2, global cap 4. */
const CALL_TABLE: Array<[string, Step, unknown]> = [
  ['register c1 for a', async (s) => outcome(await s.register(reg('c1', 'a', { tool: 'read_file', sessionId: 's1' }))), 'ok'],
  ['find it for a', async (s) => (await s.find('a', 'c1'))?.tool, 'read_file'],
  ['its session', async (s) => (await s.find('a', 'c1'))?.sessionId, 's1'],
  ['not for b', async (s) => await s.find('b', 'c1'), null],
  ['an unknown id', async (s) => await s.find('a', 'nope'), null],
  ['c1 again for b is a conflict', async (s) => outcome(await s.register(reg('c1', 'b'))), 'conflict'],
  ['c1 again for a replaces it', async (s) => outcome(await s.register(reg('c1', 'a', { tool: 'fetch' }))), 'ok'],
  ['replaced', async (s) => (await s.find('a', 'c1'))?.tool, 'fetch'],
  ['a second call for a', async (s) => outcome(await s.register(reg('c2', 'a'))), 'ok'],
  ["a's third is over the client cap", async (s) => outcome(await s.register(reg('c3', 'a'))), 'client_limit'],
  ['open for a', async (s) => ids(await s.open('a')), ['c1', 'c2']],
  ['open for nobody', async (s) => await s.open('nobody'), []],
  ['b registers two', async (s) => [outcome(await s.register(reg('b1', 'b'))), outcome(await s.register(reg('b2', 'b')))], ['ok', 'ok']],
  ['size', async (s) => await s.size(), 4],
  ['the registry is full', async (s) => outcome(await s.register(reg('x1', 'x'))), 'registry_full'],
  ['end c2', async (s) => await s.end('c2'), true],
  ['end c2 again', async (s) => await s.end('c2'), false],
  ['gone', async (s) => await s.find('a', 'c2'), null],
  ['room again', async (s) => outcome(await s.register(reg('x1', 'x', { ttlMs: 60 }))), 'ok'],
  ['x1 expires', async (s) => (await sleep(120), await s.find('x', 'x1')), null],
  ['not open after expiry', async (s) => await s.open('x'), []],
  ['and not counted', async (s) => await s.size(), 3],
  ['an expired id is free for another client', async (s) => outcome(await s.register(reg('x1', 'y'))), 'ok'],
];

const DISCOVERED_TABLE: Array<[server: string, tool: string | null, host: string, port: number]> = [
  ['srv', 'fetch', 'a.example', 443],
  ['srv', 'fetch', 'a.example', 443],
  ['srv', null, 'a.example', 443],
  ['srv', '', 'a.example', 443],
  ['other', 'fetch', 'a.example', 443],
  ['srv', 'fetch', 'a.example', 80],
  ['srv', 'fetch', 'a.example', 443],
];

async function memoryState(): Promise<State> {
  return createState(
    { store: 'memory', redisUrl: '', keyPrefix: 'x', timeoutMs: 250 },
    { defaultTtlMs: 60_000, maxPerClient: 2, maxTotal: 4 },
  );
}

async function until(pred: () => boolean | Promise<boolean>, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await sleep(10);
  }
}

async function redisState(t: Test, url: string, prefix: string, extra: Partial<Parameters<typeof createState>[1]> = {}): Promise<State> {
  const state = await createState(
    { store: 'redis', redisUrl: url, keyPrefix: prefix, timeoutMs: 250 },
    { defaultTtlMs: 60_000, maxPerClient: 2, maxTotal: 4, ...extra },
  );
  t.teardown(() => state.close());
  await until(() => state.up);
  return state;
}

const normalise = (list: DiscoveredDestination[]) =>
  list
    .map((e) => ({ server: e.server, tool: e.tool, host: e.host, port: e.port, count: e.count }))
    .sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));

async function runTables(t: Test, state: State): Promise<void> {
  for (const [what, step, expected] of CALL_TABLE) t.same(await step(state.calls), expected, what);
  const firstSeen: DiscoveredDestination[] = [];
  for (const [server, tool, host, port] of DISCOVERED_TABLE) state.discovered.record(server, tool, host, port, (e) => firstSeen.push(e));
  await until(async () => (await state.discovered.list()).reduce((n, e) => n + e.count, 0) === DISCOVERED_TABLE.length);
  t.same(normalise(await state.discovered.list()), [
    { server: 'other', tool: 'fetch', host: 'a.example', port: 443, count: 1 },
    { server: 'srv', tool: '', host: 'a.example', port: 443, count: 1 },
    { server: 'srv', tool: 'fetch', host: 'a.example', port: 443, count: 3 },
    { server: 'srv', tool: 'fetch', host: 'a.example', port: 80, count: 1 },
    { server: 'srv', tool: null, host: 'a.example', port: 443, count: 1 },
  ]);
  t.equal(firstSeen.length, 5, 'first seen once per entry');
}

t.test('memory store: the table', async (t) => {
  const state = await memoryState();
  t.teardown(() => state.close());
  t.equal(state.calls.find('a', 'c1'), null, 'memory answers without a promise');
  await runTables(t, state);
});

t.test('redis store: the same table', { skip: missing('redis-server') }, async (t) => {
  const redis = await startRedis(t);
  await runTables(t, await redisState(t, redis.url, 'tbl:'));
});

t.test('redis: caps hold across replicas registering at once (one atomic script)', { skip: missing('redis-server') }, async (t) => {
  const redis = await startRedis(t);
  const a = await redisState(t, redis.url, 'caps:', { maxPerClient: 5, maxTotal: 8 });
  const b = await redisState(t, redis.url, 'caps:', { maxPerClient: 5, maxTotal: 8 });
  // Both replicas' registrations in flight at once (the Redis store answers with promises).
  const answers = await Promise.all(
    Array.from({ length: 20 }, async (_, i) => (i % 2 ? a : b).calls.register(reg(`c${i}`, `client${i % 3}`))),
  );
  const ok = answers.filter((r) => 'callId' in r).length;
  t.equal(ok, 8, 'exactly the global cap, however the two replicas interleaved');
  t.equal(await a.calls.size(), 8);
  for (let c = 0; c < 3; c++) t.ok((await b.calls.open(`client${c}`)).length <= 5, 'per-client cap');
});

t.test('redis: discovered counts are exact under concurrent load from two replicas', { skip: missing('redis-server') }, async (t) => {
  const redis = await startRedis(t);
  const a = await redisState(t, redis.url, 'cnt:');
  const b = await redisState(t, redis.url, 'cnt:');
  let firsts = 0;
  for (let i = 0; i < 500; i++) {
    a.discovered.record('srv', 'fetch', 'x.example', 443, () => firsts++);
    b.discovered.record('srv', 'fetch', 'x.example', 443, () => firsts++);
  }
  await until(async () => ((await a.discovered.list())[0]?.count ?? 0) >= 1000);
  await sleep(50);
  t.same(normalise(await b.discovered.list()), [{ server: 'srv', tool: 'fetch', host: 'x.example', port: 443, count: 1000 }]);
  t.equal(firsts, 1, 'egress.discovered from exactly one replica');
});

const at = (ms: number) => Date.now() - ms;
const hcall = (over: Partial<HistoryCall>): HistoryCall => ({
  at: Date.now(),
  tool: 'read_file',
  callId: null,
  server: 'srv',
  sessionId: 's1',
  host: null,
  address: null,
  dispatched: null,
  ...over,
});

t.test(
  'redis history: newest first, retention, once per call id and key, egress calls kept',
  { skip: missing('redis-server') },
  async (t) => {
    const redis = await startRedis(t);
    const state = await redisState(t, redis.url, 'hist:');
    const history = state.history as RedisHistoryStore;
    const key = historyKey('s1', 'srv');
    t.same(await history.read(key, Date.now()), [], 'retention 0 keeps nothing');
    history.record(hcall({ callId: 'r0' }));
    history.setRetention(60);
    t.equal(history.retentionSeconds, 60);
    history.record(hcall({ at: at(120_000), callId: 'old' }));
    history.record(hcall({ at: at(3000), callId: 'r1' }));
    history.record(hcall({ at: at(2000), callId: 'r1', tool: 'again' }));
    history.record(
      hcall({
        at: at(1000),
        callId: 'f1',
        tool: 'fetch',
        host: 'evil.example',
        address: parseIpLiteral('93.184.216.34'),
        dispatched: true,
      }),
    );
    history.record(
      hcall({
        at: at(500),
        callId: 'f1',
        tool: 'fetch',
        host: 'evil2.example',
        address: parseIpLiteral('93.184.216.35'),
        dispatched: false,
      }),
    );
    history.record(hcall({ at: at(400), callId: null, tool: 'anon' }));
    history.record(hcall({ at: at(300), sessionId: null, callId: 'other-key' }));
    let calls: readonly HistoryCall[] = [];
    await until(async () => (calls = (await history.read(key, Date.now())) ?? []).length === 4);
    t.same(
      calls.map((c) => [c.callId, c.tool, c.host, c.address?.text ?? null, c.dispatched]),
      [
        [null, 'anon', null, null, null],
        ['f1', 'fetch', 'evil2.example', '93.184.216.35', false],
        ['f1', 'fetch', 'evil.example', '93.184.216.34', true],
        ['r1', 'read_file', null, null, null],
      ],
      'newest first; the old call is past retention; r1 once; each egress call of f1 kept',
    );
    t.same(
      (await history.read(historyKey(null, 'srv'), Date.now()))?.map((c) => c.callId),
      ['other-key'],
      'a call without a session is under its server',
    );
    const ttl = await redis.command('PTTL', `hist:hist:${key}`);
    t.match(ttl, /^:(\d+)/, 'the key expires by its TTL');
    t.ok(Number(/^:(\d+)/.exec(ttl)?.[1]) <= 60_000);
  },
);

t.test(
  'redis history: at most 1,024 calls per key; a key that lost calls inside the window fails closed',
  { skip: missing('redis-server') },
  async (t) => {
    const redis = await startRedis(t);
    const state = await redisState(t, redis.url, 'cap:');
    const history = state.history as RedisHistoryStore;
    history.setRetention(600);
    const base = Date.now() - 100_000;
    for (let i = 0; i < 1100; i++) history.record(hcall({ at: base + i, callId: `c${i}` }));
    await until(async () => state.queuedWrites === 0 && (await history.read(historyKey('s1', 'srv'), Date.now())) === null);
    t.equal(
      await history.read(historyKey('s1', 'srv'), Date.now()),
      null,
      'calls inside the window were dropped: the key cannot be vouched for (a flood must not push a read out of sight)',
    );
    t.match(await redis.command('ZCARD', `cap:hist:${historyKey('s1', 'srv')}`), /^:1024\r\n/, 'at most 1,024 kept in Redis');
    t.same(
      ((await history.read(historyKey('s1', 'srv'), base + 1_100 + 600_000)) ?? []).length,
      0,
      'readable again once the dropped calls have left the window (and the kept ones with them)',
    );
    const other = await history.read(historyKey('s2', 'srv'), Date.now());
    t.same(other, [], 'other keys are unaffected');
  },
);

t.test('redis: a store that is down or slow fails closed; writes wait and heal', { skip: missing('redis-server') }, async (t) => {
  const redis = await startRedis(t);
  const relay = await delayingRelay(t, redis.port);
  const url = `redis://127.0.0.1:${relay.port}/0`;
  const healths: boolean[] = [];
  const state = await redisState(t, url, 'fault:', { onHealth: (up) => healths.push(up) });
  t.equal(outcome(await state.calls.register(reg('c1', 'a'))), 'ok');

  relay.delayMs = 1500;
  const started = Date.now();
  await t.rejects(Promise.resolve(state.calls.find('a', 'c1')), StateUnavailableError, 'slower than timeout_ms: unavailable');
  t.ok(Date.now() - started < 1200, 'answered at the timeout, not when Redis answered');
  await t.rejects(Promise.resolve(state.calls.register(reg('c2', 'a'))), StateUnavailableError, 'registering too');
  relay.delayMs = 0;
  await sleep(1600);
  t.equal((await state.calls.find('a', 'c1'))?.callId, 'c1', 'fast again: answered');

  await redis.stop();
  await until(() => !state.up);
  t.same(healths, [true, false]);
  await t.rejects(Promise.resolve(state.calls.open('a')), StateUnavailableError, 'down: unavailable at once');
  await t.rejects(Promise.resolve(state.discovered.list()), StateUnavailableError);
  state.discovered.record('srv', 'fetch', 'late.example', 443);
  t.equal(state.queuedWrites, 1, 'the write waits for the store');

  await redis.restart();
  await until(() => state.up, 5000);
  await until(async () => (await state.discovered.list()).length === 1);
  t.same(
    normalise(await state.discovered.list()),
    [{ server: 'srv', tool: 'fetch', host: 'late.example', port: 443, count: 1 }],
    'written once it came back',
  );
  t.equal(
    await state.calls.find('a', 'c1'),
    null,
    'a restarted Redis without persistence has forgotten c1: refused as unknown, never allowed',
  );
});

t.test('redis: a full retry queue drops the oldest and counts it', { skip: missing('redis-server') }, async (t) => {
  const redis = await startRedis(t);
  const dropped: string[] = [];
  const conn = new RedisConnection({ url: redis.url, timeoutMs: 250, maxQueued: 3, onDropped: (r) => dropped.push(r) });
  t.teardown(() => conn.close(0));
  const written: number[] = [];
  for (let i = 0; i < 5; i++) conn.write(async () => written.push(i), true);
  t.same(dropped, ['queue_full', 'queue_full'], 'not connected yet: queued, bounded');
  conn.start();
  await until(() => written.length === 3);
  t.same(written, [2, 3, 4], 'the newest three');
});

t.test('redis: one round trip per read, the password never in a message', { skip: missing('redis-server') }, async (t) => {
  const redis = await startRedis(t, { password: 's3cret-pw' });
  const relay = await delayingRelay(t, redis.port);
  const warnings: string[] = [];
  const conn = new RedisConnection({
    url: `redis://:s3cret-pw@127.0.0.1:${relay.port}/0`,
    timeoutMs: 1000,
    warn: (f, m) => warnings.push(JSON.stringify(f) + m),
  });
  t.teardown(() => conn.close(0));
  conn.start();
  await until(() => conn.up);
  t.equal(conn.redactedUrl, `redis://:***@127.0.0.1:${relay.port}/0`);
  const calls = new RedisCallStore(conn, { prefix: 'rt:', defaultTtlMs: 60_000 });
  await calls.register(reg('c1', 'a'));
  const history = new RedisHistoryStore(conn, 'rt:');
  history.setRetention(60);
  relay.delayMs = 300;
  const reads: Array<[string, () => Promise<unknown>]> = [
    ['find', () => calls.find('a', 'c1')],
    ['open', () => calls.open('a')],
    ['history', () => history.read('session:s', Date.now())],
    ['register', () => calls.register(reg('c2', 'a'))],
  ];
  for (const [what, read] of reads) {
    const started = Date.now();
    await read();
    const took = Date.now() - started;
    t.ok(took >= 300 && took < 580, `${what}: one round trip (${took} ms with 300 ms added to each)`);
  }
  relay.delayMs = 0;
  await redis.stop();
  await until(() => !conn.up);
  t.ok(warnings.length > 0, 'the loss is logged');
  t.notMatch(warnings.join('\n'), /s3cret-pw/, 'without the password');
});

t.test(
  'rediss://: TLS to a redis-server with the fixtures certificate, verified against its CA',
  { skip: missing('redis-server') },
  async (t) => {
    const redis = await startRedis(t, { tls: true, password: 'tls-pw' });
    t.match(redis.url, /^rediss:\/\//);
    const config = { store: 'redis' as const, redisUrl: redis.url, keyPrefix: 'tls:', timeoutMs: 500 };
    const state = await createState(config, {
      defaultTtlMs: 60_000,
      tlsCa: TLS.ca.toString(),
      env: { MCP_EGRESS_REDIS_PASSWORD: 'tls-pw' },
    });
    t.teardown(() => state.close());
    await until(() => state.up);
    t.equal(outcome(await state.calls.register(reg('c1', 'a'))), 'ok', 'over TLS, with the password from the environment');
    t.equal((await state.calls.find('a', 'c1'))?.callId, 'c1');

    const untrusted = await createState(config, { defaultTtlMs: 60_000, env: { MCP_EGRESS_REDIS_PASSWORD: 'tls-pw' } });
    t.teardown(() => untrusted.close());
    await sleep(300);
    t.equal(untrusted.up, false, 'a certificate from an unknown CA is refused');
    await t.rejects(Promise.resolve(untrusted.calls.find('a', 'c1')), StateUnavailableError);

    const wrong = await createState(config, {
      defaultTtlMs: 60_000,
      tlsCa: TLS.ca.toString(),
      env: { MCP_EGRESS_REDIS_PASSWORD: 'wrong' },
    });
    t.teardown(() => wrong.close());
    await sleep(300);
    t.equal(wrong.up, false, 'a wrong password never makes the store up');
  },
);

t.test('redis: a proxy started while Redis is down connects when it comes up', { skip: missing('redis-server') }, async (t) => {
  const redis = await startRedis(t);
  await redis.stop();
  const warnings: string[] = [];
  const state = await createState(
    { store: 'redis', redisUrl: redis.url, keyPrefix: 'late:', timeoutMs: 250 },
    { defaultTtlMs: 60_000, warn: (_f, m) => warnings.push(m) },
  );
  t.teardown(() => state.close());
  await sleep(200);
  t.equal(state.up, false);
  await t.rejects(Promise.resolve(state.calls.open('a')), StateUnavailableError, 'refused while it never was up');
  await redis.restart();
  await until(() => state.up, 5000);
  t.same(await state.calls.open('a'), [], 'answers once it is up');
});

t.test(
  'redis history: a read recorded by replica A is the earlier call a sequence rule on replica B sees',
  { skip: missing('redis-server') },
  async (t) => {
    const redis = await startRedis(t);
    const a = await redisState(t, redis.url, 'seq:');
    const b = await redisState(t, redis.url, 'seq:');
    const spec = parsePolicy(
      'p.yaml',
      `version: 1
default_verdict: allow
rules:
  - id: no-egress-after-read
    priority: 1
    verdict: deny
    after: {tool_name_glob: "read_*", within_seconds: 600}
`,
    ).spec;
    if (!spec) throw new Error('policy');
    const policy = compilePolicy(spec);
    for (const s of [a, b]) s.history?.setRetention(600);
    const decideOnB = async () => {
      const history = (await b.history?.read(historyKey('agent-1', 'srv'), Date.now())) ?? [];
      const r = await dryRun(
        policy,
        { destination: 'https://93.184.216.34/', tool: 'fetch', server: 'srv', callId: 'f1', now: Date.now(), history },
        { fallback: { resolve: async () => ({ addresses: [], durationMs: 0 }) } as never, allowCidrs: [] },
      );
      return r.kind === 'decision' ? r.decision : null;
    };
    t.match(await decideOnB(), { verdict: 'allow', reason: 'default' }, 'no read yet: allowed');
    a.history?.record(hcall({ at: Date.now() - 5000, tool: 'read_file', callId: 'r1', sessionId: 'agent-1' }));
    await until(async () => ((await b.history?.read(historyKey('agent-1', 'srv'), Date.now())) ?? []).length === 1);
    t.match(
      await decideOnB(),
      { verdict: 'deny', rule: { id: 'no-egress-after-read' }, after: { call_id: 'r1', tool: 'read_file', session_id: 'agent-1' } },
      'the rule fires on B',
    );
  },
);

t.test('redis history: a call not yet acknowledged is seen by reads here; a dropped one fails the key closed for its window', async (t) => {
  // A connection whose background writes wait for the test to settle them, over a Redis that holds nothing.
  const writes: Array<(applied: boolean) => void> = [];
  const conn = {
    write: (_run: () => Promise<unknown>, _idempotent: boolean, settled?: (applied: boolean) => void) => writes.push(settled ?? (() => {})),
    read: <T>(run: () => Promise<T>) => run(),
    eval: () => Promise.resolve([]),
    loadForReads: () => undefined,
  } as unknown as RedisConnection;
  let now = 1_000_000;
  const history = new RedisHistoryStore(conn, 'p:', () => now);
  history.setRetention(60);
  const read = (session: string, n: string | null, at = now): HistoryCall => ({
    at,
    tool: 'read_file',
    callId: n,
    server: 'srv',
    sessionId: session,
    host: null,
    address: null,
    dispatched: null,
  });
  history.record(read('s1', 'c1'));
  t.same(
    (await history.read(historyKey('s1', 'srv'), now))?.map((c) => c.callId),
    ['c1'],
    'queued, not yet in Redis: this replica still sees it',
  );
  writes.shift()?.(true);
  t.same(await history.read(historyKey('s1', 'srv'), now), [], 'acknowledged: from Redis only (empty here)');

  history.record(read('s2', 'c2'));
  writes.shift()?.(false);
  t.equal(await history.read(historyKey('s2', 'srv'), now + 59_000), null, 'dropped: the key cannot be vouched for within the window');
  t.same(await history.read(historyKey('s1', 'srv'), now + 59_000), [], 'other keys are unaffected');
  t.same(await history.read(historyKey('s2', 'srv'), now + 60_001), [], 'once the dropped call is out of the window, readable again');

  for (let i = 0; i < MAX_UNRELIABLE_KEYS + 1; i++) history.record(read(`many-${i}`, `m${i}`));
  for (const settle of writes.splice(0)) settle(false);
  t.equal(await history.read(historyKey('never-seen', 'srv'), now + 1), null, 'past the bound of remembered keys, every key fails closed');
  now += 60_001;
  t.same(await history.read(historyKey('never-seen', 'srv'), now), [], 'until the window has passed');
});

t.test('redis combined read: registrations with their histories, pending calls merged as of sending, keys checked', async (t) => {
  // A connection whose reads answer when the test says, and whose background writes wait to be settled.
  const writes: Array<(applied: boolean) => void> = [];
  const replies: Array<(reply: unknown) => void> = [];
  const conn = {
    write: (_run: () => Promise<unknown>, _idempotent: boolean, settled?: (applied: boolean) => void) => writes.push(settled ?? (() => {})),
    read: <T>(run: () => Promise<T>) => run(),
    eval: () => new Promise((resolve) => replies.push(resolve)),
    loadForReads: () => undefined,
  } as unknown as RedisConnection;
  const now = 1_000_000;
  const calls = new RedisCallStore(conn, { prefix: 'p:', defaultTtlMs: 60_000 });
  const history = new RedisHistoryStore(conn, 'p:', () => now, calls);
  history.setRetention(60);
  const stored = (tool: string, session: string | null, at: number) => `${now + 30_000}|${JSON.stringify([tool, session, at])}`;
  const read = (callId: string, sessionId: string | null): HistoryCall => ({
    at: now - 10,
    tool: 'read_file',
    callId,
    server: 'srv',
    sessionId,
    host: null,
    address: null,
    dispatched: null,
  });
  const ask = (callId: string | null) =>
    history.readWithRegistrations(
      calls,
      { client: 'srv', callId, fallbackKey: historyKey(null, 'srv') },
      now,
    ) as Promise<RegistrationsWithHistories>;
  const answer = async (reply: unknown) => {
    await sleep(0);
    replies.shift()?.(reply);
  };

  t.equal(
    history.readWithRegistrations(
      new RedisCallStore(conn, { prefix: 'p:', defaultTtlMs: 1 }),
      { client: 'srv', callId: null, fallbackKey: 'x' },
      now,
    ),
    null,
    'another registry: not combined (the caller reads in turn)',
  );

  history.record(read('r1', 's1'));
  const sent = ask('f1');
  // Acknowledged after the read was sent: that read may have missed it in Redis, so it still merges it.
  writes.shift()?.(true);
  await answer([['f1', stored('fetch', 's1', now - 5), 'session:s1', []]]);
  const first = await sent;
  t.same(
    first.calls.map((c) => [c.callId, c.sessionId]),
    [['f1', 's1']],
    'the registration found',
  );
  t.same(
    first.histories.map((h) => h?.map((c) => c.callId)),
    [['r1']],
    "its session's history holds the call pending when the read was sent",
  );
  const later = ask('f1');
  await answer([['f1', stored('fetch', 's1', now - 5), 'session:s1', []]]);
  t.same((await later).histories, [[]], 'a read sent after the acknowledgement has it from Redis only (empty here)');

  const open = ask(null);
  await answer([
    ['f2', stored('fetch', null, now - 1), 'server:srv', []],
    ['f1', stored('fetch', 's1', now - 5), 'session:s1', false],
    ['f3', stored('fetch', 's3', now - 3), 'server:srv', []],
  ]);
  const o = await open;
  t.same(
    o.calls.map((c) => c.callId),
    ['f1', 'f3', 'f2'],
    'open calls in registration order, histories alongside',
  );
  t.same(o.histories, [null, null, []], "a key lost to the cap (nil) and a key other than the registration's own are not vouched for");

  const none = ask(null);
  await answer([['', '', 'server:srv', []]]);
  t.same(await none, { calls: [], histories: [[]] }, "no open call: the fallback key's history");
  const wrongFallback = ask(null);
  await answer([['', '', 'session:other', []]]);
  t.same(await wrongFallback, { calls: [], histories: [null] }, 'a fallback for another key is not vouched for');
  const notFound = ask('f9');
  await answer([]);
  t.same(await notFound, { calls: [], histories: [] }, 'a call id not found: nothing (unattributed)');

  history.record(read('r2', 's4'));
  writes.shift()?.(false);
  const dropped = ask('f4');
  await answer([['f4', stored('fetch', 's4', now - 5), 'session:s4', []]]);
  t.same((await dropped).histories, [null], 'a key with a dropped write is not vouched for');
  t.equal((history as unknown as { pending: Map<string, unknown> }).pending.size, 0, 'nothing pending kept once every read is answered');
});
