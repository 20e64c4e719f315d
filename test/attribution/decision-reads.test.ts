/**
 * What a decision reads before the policy runs (attribution/decision-reads.ts): one table over
 * trust modes, headers, open registrations and sequence clauses, against the memory stores
 * (which must answer without a promise), then a shared store's combined read (the lookup and
 * the histories it leads to in one call, never a lookup and then a read).
 */
import t from 'tap';
import { readForDecision } from '../../src/attribution/decision-reads.js';
import type { DecisionReadOptions, DecisionReads } from '../../src/attribution/decision-reads.js';
import type { HistoryCall } from '../../src/policy/types.js';
import { MemoryHistoryStore } from '../../src/state/history.js';
import { CallRegistry } from '../../src/state/registry.js';
import type { CallStore, HistoryStore, RegisteredCall, RegistrationsQuery, RegistrationsWithHistories } from '../../src/state/types.js';

const NOW = 1_000_000;
const NAMES = { tool: 'x-mcp-tool', call: 'x-mcp-call-id', session: 'x-mcp-session-id' };
const headers =
  (h: Record<string, string>) =>
  (name: string): string[] | undefined =>
    name in h ? [h[name] as string] : undefined;
const recorded = (tool: string, sessionId: string | null, server = 'srv'): HistoryCall => ({
  at: NOW - 1000,
  tool,
  callId: `${tool}-id`,
  server,
  sessionId,
  host: null,
  address: null,
  dispatched: null,
});

function memoryStores(): { registry: CallRegistry; history: MemoryHistoryStore } {
  const registry = new CallRegistry({ defaultTtlMs: 60_000, now: () => NOW });
  const history = new MemoryHistoryStore({ now: () => NOW });
  history.setRetention(600);
  registry.register({ callId: 'open-1', tool: 'fetch', client: 'srv', sessionId: 'agent-1' });
  history.record(recorded('read_file', 'agent-1'));
  history.record(recorded('list_dir', null));
  history.record(recorded('grep', 'header-session'));
  return { registry, history };
}

/** [what, trust, headers, with histories, client, expected attribution (tool/session per call) or kind, expected history tools per call]. */
const TABLE: Array<[string, 'header' | 'registered', Record<string, string>, boolean, string, unknown, unknown]> = [
  ['header: tool header, no sequence clause', 'header', { 'x-mcp-tool': 'fetch' }, false, 'srv', [['fetch', null]], null],
  [
    'header: tool and session headers, sequence clauses',
    'header',
    { 'x-mcp-tool': 'fetch', 'x-mcp-session-id': 'agent-1' },
    true,
    'srv',
    [['fetch', 'agent-1']],
    [['read_file']],
  ],
  ['header: no header, an open call: its session', 'header', {}, true, 'srv', [['fetch', 'agent-1']], [['read_file']]],
  [
    'header: no header, no open call: the session header',
    'header',
    { 'x-mcp-session-id': 'header-session' },
    true,
    'other',
    [[null, 'header-session']],
    [['grep']],
  ],
  ['header: no header, no open call, no session: the client', 'header', {}, true, 'other', [[null, null]], [[]]],
  [
    'registered: a registered call id: its session',
    'registered',
    { 'x-mcp-call-id': 'open-1' },
    true,
    'srv',
    [['fetch', 'agent-1']],
    [['read_file']],
  ],
  ['registered: an unknown call id', 'registered', { 'x-mcp-call-id': 'nope' }, true, 'srv', 'unattributed', null],
  ['registered: another client: unknown to it', 'registered', { 'x-mcp-call-id': 'open-1' }, true, 'other', 'unattributed', null],
  ['registered: no header, an open call', 'registered', {}, true, 'srv', [['fetch', 'agent-1']], [['read_file']]],
  [
    'registered: no header, no open call: the client, never a session header',
    'registered',
    { 'x-mcp-session-id': 'header-session' },
    true,
    'other',
    [[null, null]],
    [[]],
  ],
  ['registered: a call id, no sequence clause', 'registered', { 'x-mcp-call-id': 'open-1' }, false, 'srv', [['fetch', 'agent-1']], null],
  ['a tool header with a control character: bad request', 'header', { 'x-mcp-tool': 'a\u0001' }, true, 'srv', 'bad_request', null],
];

const shape = (r: DecisionReads) => ({
  attribution: r.attribution.kind === 'attributed' ? r.attribution.calls.map((c) => [c.tool, c.sessionId]) : r.attribution.kind,
  histories: r.histories ? r.histories.map((h) => h.map((c) => c.tool)) : null,
});

for (const [what, trust, h, withHistories, client, attribution, histories] of TABLE) {
  t.test(`memory: ${what}`, async (t) => {
    const { registry, history } = memoryStores();
    const options: DecisionReadOptions = { names: NAMES, trust, registry, history, withHistories, now: NOW };
    const reads = readForDecision(headers(h), client, options);
    t.notOk(reads instanceof Promise, 'answered without a promise');
    t.same(shape(reads as DecisionReads), { attribution, histories });
  });
}

t.test('memory: a history that cannot be vouched for is null (the caller refuses state_unavailable)', async (t) => {
  const { registry, history } = memoryStores();
  const failing: HistoryStore = { ...history, record: () => {}, read: () => null, setRetention: () => {}, retentionSeconds: 600 };
  const reads = readForDecision(headers({}), 'srv', {
    names: NAMES,
    trust: 'header',
    registry,
    history: failing,
    withHistories: true,
    now: NOW,
  });
  t.notOk(reads instanceof Promise);
  t.same(shape(reads as DecisionReads), { attribution: [['fetch', 'agent-1']], histories: null });
});

t.test('a shared store: the lookup and its histories in one call, the registry itself never asked', async (t) => {
  const asked: RegistrationsQuery[] = [];
  const registry = {
    find: () => t.fail('find called: a second round trip'),
    open: () => t.fail('open called: a second round trip'),
  } as unknown as CallStore;
  let answer: RegistrationsWithHistories = { calls: [], histories: [] };
  const history: HistoryStore = {
    record: () => {},
    read: () => Promise.resolve([]),
    setRetention: () => {},
    retentionSeconds: 600,
    readWithRegistrations: (r, query) => {
      t.equal(r, registry, 'given the registry the decision uses');
      asked.push(query);
      return Promise.resolve(answer);
    },
  };
  const call = (callId: string, sessionId: string | null): RegisteredCall => ({
    callId,
    tool: 'fetch',
    client: 'srv',
    sessionId,
    registeredAt: NOW - 5,
    expiresAt: NOW + 5,
  });
  const read = (h: Record<string, string>, trust: 'header' | 'registered' = 'registered') =>
    readForDecision(headers(h), 'srv', { names: NAMES, trust, registry, history, withHistories: true, now: NOW }) as Promise<DecisionReads>;

  answer = { calls: [call('c1', 'agent-1')], histories: [[recorded('read_file', 'agent-1')]] };
  t.same(shape(await read({ 'x-mcp-call-id': 'c1' })), { attribution: [['fetch', 'agent-1']], histories: [['read_file']] });
  t.same(asked.at(-1), { client: 'srv', callId: 'c1', fallbackKey: 'server:srv' }, 'one query: that call id');

  answer = { calls: [], histories: [[recorded('grep', 'header-session')]] };
  t.same(shape(await read({ 'x-mcp-session-id': 'header-session' }, 'header')), {
    attribution: [[null, 'header-session']],
    histories: [['grep']],
  });
  t.same(asked.at(-1), { client: 'srv', callId: null, fallbackKey: 'session:header-session' }, 'open calls, else the session header');

  answer = { calls: [call('c1', 'agent-1'), call('c2', null)], histories: [[]] };
  t.equal((await read({})).histories, null, 'fewer histories than calls: not vouched for');
  answer = { calls: [call('c1', 'agent-1')], histories: [null] };
  t.equal((await read({})).histories, null, 'a null history: not vouched for');
  answer = { calls: [], histories: [] };
  t.equal(shape(await read({ 'x-mcp-call-id': 'c9' })).attribution, 'unattributed', 'a call id not found: unattributed');

  const withoutSequence = readForDecision(headers({ 'x-mcp-tool': 'fetch' }), 'srv', {
    names: NAMES,
    trust: 'header',
    registry,
    history,
    withHistories: false,
    now: NOW,
  });
  t.notOk(withoutSequence instanceof Promise, 'headers alone, no sequence clause: nothing read, no promise');
  t.equal(asked.length, 5, 'one query per decision');
});
