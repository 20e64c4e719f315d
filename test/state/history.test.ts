/**
 * The memory history store (src/state/history.ts): per key, newest first, merged records (a call
 * once, each dispatched leg once), retention that follows the policy, and the bounds failing
 * closed: a key that lost a call still inside the window reads `null` until time alone makes it
 * whole again.
 */
import t from 'tap';
import { canonicalHost } from '../../src/net/address.js';
import type { IpAddress } from '../../src/net/address.js';
import type { HistoryCall } from '../../src/policy/types.js';
import { MemoryHistoryStore } from '../../src/state/history.js';
import { historyKey, MAX_CALLS_PER_KEY } from '../../src/state/types.js';

function clocked(options: { maxCalls?: number; maxCallsPerKey?: number; retention?: number } = {}) {
  let now = 1_000_000;
  const store = new MemoryHistoryStore({ now: () => now, ...options });
  store.setRetention(options.retention ?? 60);
  return { store, now: () => now, advance: (ms: number) => (now += ms) };
}

const ip = (text: string): IpAddress => {
  const h = canonicalHost(text);
  if (h.kind !== 'ip') throw new Error(text);
  return h.ip;
};

function call(at: number, fields: Partial<HistoryCall> = {}): HistoryCall {
  return { at, tool: 'read_file', callId: 'c1', server: 'srv', sessionId: 'S', host: null, address: null, dispatched: null, ...fields };
}
const leg = (at: number, host: string, address: string, fields: Partial<HistoryCall> = {}) =>
  call(at, { tool: 'fetch', host, address: ip(address), dispatched: true, ...fields });
const refusedLeg = (at: number, host: string, fields: Partial<HistoryCall> = {}) =>
  call(at, { tool: 'fetch', host, dispatched: false, ...fields });
const S = historyKey('S', 'srv');
/** What a history shows, compactly: tool@seconds-after-start[host]. */
const shown = (calls: readonly HistoryCall[] | null) =>
  calls === null
    ? null
    : calls.map((c) => `${c.callId}:${c.tool}@${(c.at - 1_000_000) / 1000}${c.host ? `[${c.host}${c.dispatched ? '' : ' refused'}]` : ''}`);

t.test('keys: the session when there is one, else the client identity; newest first', async (t) => {
  const { store, now } = clocked();
  store.record(call(now() - 3000, { callId: 'a' }));
  store.record(call(now() - 1000, { callId: 'b', sessionId: null }));
  store.record(call(now() - 2000, { callId: 'c', server: 'other' }));
  store.record(call(now(), { callId: 'd' }));
  t.same(
    shown(store.read(S, now())),
    ['d:read_file@0', 'c:read_file@-2', 'a:read_file@-3'],
    'one session across two client identities, newest first',
  );
  t.same(shown(store.read(historyKey(null, 'srv'), now())), ['b:read_file@-1'], 'no session: the client identity');
  t.same(store.read(historyKey('T', 'srv'), now()), [], 'an unknown key is empty (nothing was lost)');
  t.equal(store.size, 2);
  t.equal(store.calls, 4);
});

t.test('merging: a call once, each dispatched leg once, with its newest time', async (t) => {
  const rows: Array<[string, HistoryCall[], string[]]> = [
    [
      'a registered call that then connects is one record',
      [call(0, { tool: 'fetch' }), leg(1, 'a.example', '93.184.216.34')],
      ['c1:fetch@0.001[a.example]'],
    ],
    [
      'two hosts are two legs',
      [leg(0, 'a.example', '93.184.216.34'), leg(1, 'b.example', '93.184.216.35')],
      ['c1:fetch@0.001[b.example]', 'c1:fetch@0[a.example]'],
    ],
    [
      'the same leg again keeps the newest time',
      [leg(0, 'a.example', '93.184.216.34'), leg(5, 'a.example', '93.184.216.34')],
      ['c1:fetch@0.005[a.example]'],
    ],
    [
      'another address of the same host is another leg',
      [leg(0, 'a.example', '93.184.216.34'), leg(5, 'a.example', '93.184.216.35')],
      ['c1:fetch@0.005[a.example]', 'c1:fetch@0[a.example]'],
    ],
    [
      'a refused leg after a dispatched one is kept (newer)',
      [leg(0, 'a.example', '93.184.216.34'), refusedLeg(5, 'evil.example')],
      ['c1:fetch@0.005[evil.example refused]', 'c1:fetch@0[a.example]'],
    ],
    [
      'a refused leg no newer than a dispatched one adds nothing',
      [leg(5, 'a.example', '93.184.216.34'), refusedLeg(5, 'evil.example')],
      ['c1:fetch@0.005[a.example]'],
    ],
    [
      'refused legs of one call are one record, the newest',
      [refusedLeg(0, 'a.example'), refusedLeg(3, 'b.example'), refusedLeg(2, 'c.example')],
      ['c1:fetch@0.003[b.example refused]'],
    ],
    [
      'a bare call then its leg then a refusal then the leg again: two records',
      [call(0, { tool: 'fetch' }), leg(1, 'a.example', '93.184.216.34'), refusedLeg(2, 'x.example'), leg(3, 'a.example', '93.184.216.34')],
      ['c1:fetch@0.003[a.example]'],
    ],
    [
      'another tool under the same call id is another call',
      [call(0, { tool: 'read_file' }), call(1, { tool: 'fetch' })],
      ['c1:fetch@0.001', 'c1:read_file@0'],
    ],
    [
      'calls without a call id merge by tool and client alike',
      [call(0, { callId: null }), call(1, { callId: null }), call(2, { callId: null, tool: 'x' })],
      ['null:x@0.002', 'null:read_file@0.001'],
    ],
    [
      'a record older than the newest goes in its place',
      [call(5, { callId: 'a' }), call(1, { callId: 'b' }), call(3, { callId: 'c' })],
      ['a:read_file@0.005', 'c:read_file@0.003', 'b:read_file@0.001'],
    ],
  ];
  for (const [name, calls, expected] of rows) {
    const { store, now } = clocked();
    for (const c of calls) store.record({ ...c, at: now() + c.at });
    t.same(shown(store.read(S, now() + 10)), expected, name);
    t.equal(store.calls, expected.length, `${name}: counted`);
  }
});

t.test('a history read is a snapshot: later records do not change it', async (t) => {
  const { store, now } = clocked();
  store.record(call(now(), { callId: 'a' }));
  const before = store.read(S, now()) as readonly HistoryCall[];
  store.record(call(now() + 1, { callId: 'b' }));
  store.record(call(now() + 2, { callId: 'a' }));
  t.same(shown(before), ['a:read_file@0']);
  t.same(shown(store.read(S, now() + 2)), ['a:read_file@0.002', 'b:read_file@0.001']);
});

t.test('retention: the longest window of the policy; none kept without sequence clauses', async (t) => {
  const { store, now, advance } = clocked({ retention: 10 });
  store.record(call(now(), { callId: 'a' }));
  advance(5_000);
  store.record(call(now(), { callId: 'b' }));
  advance(5_000);
  t.same(shown(store.read(S, now())), ['b:read_file@5', 'a:read_file@0'], 'exactly the window ago still counts');
  advance(1);
  t.same(shown(store.read(S, now())), ['b:read_file@5'], 'older than the window: gone');
  store.setRetention(2);
  t.same(store.read(S, now()), [], 'a shorter window (reload) applies at once');
  store.setRetention(10);
  store.record(call(now(), { callId: 'c' }));
  store.setRetention(0);
  t.equal(store.calls, 0, 'no sequence clause left: everything dropped');
  store.record(call(now(), { callId: 'd' }));
  t.equal(store.calls, 0, 'and nothing recorded');
  t.same(store.read(S, now()), []);
  t.equal(store.retentionSeconds, 0);
});

t.test('sweep drops old calls and empty keys', async (t) => {
  const { store, now, advance } = clocked({ retention: 10 });
  for (let i = 0; i < 100; i++) store.record(call(now(), { sessionId: `s${i}` }));
  advance(5_000);
  store.record(call(now(), { sessionId: 'late' }));
  advance(6_000);
  store.sweep(now());
  t.equal(store.size, 1);
  t.equal(store.calls, 1);
});

t.test('the per-key cap: the oldest goes, and the key is refused (null) while it could matter', async (t) => {
  const { store, now, advance } = clocked({ retention: 60 });
  store.record(call(now(), { callId: 'secret-read' }));
  advance(1_000);
  for (let i = 0; i < MAX_CALLS_PER_KEY; i++) store.record(call(now(), { callId: `noise-${i}`, tool: 'fetch' }));
  t.equal(store.calls, MAX_CALLS_PER_KEY, 'at most 1,024 calls per key');
  t.equal(store.read(S, now()), null, 'the read inside the window was pushed out: fail closed');
  t.same(store.read(historyKey('other', 'srv'), now()), [], 'other keys are unaffected');
  advance(59_000);
  t.equal(store.read(S, now()), null, 'still inside the window (exactly 60 s)');
  advance(1);
  t.equal(
    (store.read(S, now()) as readonly HistoryCall[]).length,
    MAX_CALLS_PER_KEY,
    'once the lost call has left the window, the key is whole again',
  );
});

t.test('the total bound: the key written longest ago is evicted, and absent or recreated keys fail closed', async (t) => {
  const { store, now, advance } = clocked({ maxCalls: 4, retention: 30 });
  store.record(call(now(), { sessionId: 'old', callId: 'r' }));
  advance(1_000);
  for (const s of ['a', 'b', 'c']) store.record(call(now(), { sessionId: s }));
  t.equal(store.calls, 4);
  store.record(call(now(), { sessionId: 'new' }));
  t.equal(store.calls, 4, 'still at the bound');
  t.equal(store.read(historyKey('old', null), now()), null, 'the evicted key: its read could be in the window');
  t.equal(store.read(historyKey('never-seen', null), now()), null, 'any absent key: it could have been evicted');
  t.same(
    shown(store.read(historyKey('new', null), now())),
    ['c1:read_file@1'],
    'the key whose write evicted: created before anything was lost',
  );
  t.equal(store.read(historyKey('a', null), now())?.length, 1, 'keys held since before the eviction are whole');
  store.record(call(now(), { sessionId: 'old', callId: 'x' }));
  t.equal(store.calls, 4, "writing the evicted key again evicts the next ('a')");
  t.equal(store.read(historyKey('old', null), now()), null, 'writing the evicted key again does not make it whole');
  t.equal(store.read(historyKey('b', null), now())?.length, 1, 'keys held since before the eviction are whole');
  advance(29_000);
  t.equal(store.read(historyKey('old', null), now()), null, 'exactly the window after the evicted call: still refused');
  advance(1);
  t.same(
    shown(store.read(historyKey('old', null), now())),
    ['x:read_file@1'],
    'after the window: whole (the evicted call would have expired anyway)',
  );
  t.equal(store.read(historyKey('never-seen', null), now()), null, "absent keys: 'a' was evicted a second later");
  advance(1_000);
  t.same(store.read(historyKey('never-seen', null), now()), [], 'absent keys are whole once every evicted call has left the window');
});
