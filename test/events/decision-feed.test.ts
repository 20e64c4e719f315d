/** The decision feed's ring, filters and bounds, with fake streams (no sockets): what a slow client can and cannot cost. */
import t from 'tap';
import { DecisionFeed } from '../../src/events/decision-feed.js';
import type { FeedStream } from '../../src/events/decision-feed.js';
import { decisionLine } from '../../src/events/events.js';
import type { DecisionEvent } from '../../src/events/events.js';

function event(n: number, verdict: 'allow' | 'deny' = 'deny', tool: string | null = 'fetch'): DecisionEvent {
  return {
    conn_id: `c-${n}`,
    policy_generation: 1,
    decision: {
      verdict,
      dispatched: verdict === 'allow',
      shadow: false,
      reason: 'default',
      rule: null,
      after: null,
      addresses: [],
      trace: [],
      uncovered: false,
    },
    tool,
    call_id: null,
    session_id: null,
    server: '127.0.0.1',
    host: `h${n}.example`,
    port: 443,
    method: 'CONNECT',
    pinned_address: null,
    policy_digest: '0123456789ab',
  };
}
/** The line last written for each conn_id (the feed keeps lines and reads decisions back from them). */
const lines = new Map<string, string>();
function record(feed: DecisionFeed, e: DecisionEvent): void {
  const written = decisionLine(e);
  lines.set(e.conn_id, written);
  feed.decision(e, written);
}
const line = (n: number): string => lines.get(`c-${n}`) ?? decisionLine(event(n));

/** A stream whose client takes nothing (`stalled`) or everything at once. */
class FakeStream implements FeedStream {
  chunks: string[] = [];
  taken = 0;
  destroyed = false;
  constructor(public stalled: boolean) {}
  get writableLength(): number {
    return this.stalled ? this.chunks.join('').length - this.taken : 0;
  }
  write(chunk: string): boolean {
    this.chunks.push(chunk);
    return true;
  }
  destroy(): void {
    this.destroyed = true;
  }
  get text(): string {
    return this.chunks.join('');
  }
  ids(): number[] {
    return [...this.text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));
  }
}

t.test('the ring keeps the last N decisions, oldest first', async (t) => {
  const feed = new DecisionFeed({ capacity: 5 });
  for (let i = 1; i <= 12; i++) record(feed, event(i));
  t.same(
    feed.recent().map((e) => e.event.conn_id),
    ['c-8', 'c-9', 'c-10', 'c-11', 'c-12'],
  );
  t.same(
    feed.recent(2).map((e) => e.seq),
    [11, 12],
  );
  t.equal(feed.recent()[0]?.line, line(8), 'the line as the log got it');
});

t.test('a new stream starts full, filtered, after Last-Event-ID; then gets new decisions as SSE frames', async (t) => {
  const feed = new DecisionFeed({ flushMs: 5 });
  for (let i = 1; i <= 6; i++) record(feed, event(i, i % 2 ? 'deny' : 'allow'));
  const all = new FakeStream(false);
  const denies = new FakeStream(false);
  const resumed = new FakeStream(false);
  const endAll = feed.subscribe(all, () => true);
  feed.subscribe(denies, (e) => e.decision.verdict === 'deny');
  feed.subscribe(resumed, () => true, 4);
  const afterRestart = new FakeStream(false);
  feed.subscribe(afterRestart, () => true, 99);
  t.same(all.ids(), [1, 2, 3, 4, 5, 6]);
  t.same(denies.ids(), [1, 3, 5]);
  t.same(resumed.ids(), [5, 6]);
  t.same(afterRestart.ids(), [1, 2, 3, 4, 5, 6], 'an id this process never gave (a restart) starts full');
  t.match(
    all.text,
    /^retry: 2000\n\nid: 1\nevent: decision\ndata: \{"level":"info","time":"[^"]+","pid":\d+,"event":"egress.decision","conn_id":"c-1",/,
  );
  t.notMatch(all.text, /\n\n\n/, "the line's own newline is not a second blank line");
  record(feed, event(7));
  record(feed, event(8, 'allow'));
  await new Promise((r) => setTimeout(r, 30));
  t.same(all.ids(), [1, 2, 3, 4, 5, 6, 7, 8]);
  t.same(denies.ids(), [1, 3, 5, 7]);
  endAll?.();
  record(feed, event(9));
  await new Promise((r) => setTimeout(r, 30));
  t.same(all.ids(), [1, 2, 3, 4, 5, 6, 7, 8], 'an ended stream gets nothing more');
  feed.close();
});

t.test(
  'a stalled client: its waiting bytes stay within the budget and one batch, the rest is dropped and counted, then it is closed',
  async (t) => {
    const budget = 4096;
    const batch = 50;
    const feed = new DecisionFeed({ budgetBytes: budget, flushMs: 60_000, heartbeatMs: 10, stalledMs: 50 });
    const stalled = new FakeStream(true);
    const healthy = new FakeStream(false);
    feed.subscribe(stalled, () => true);
    feed.subscribe(healthy, () => true);
    const batchBytes = batch * (line(1000).length + 30);
    let most = 0;
    for (let i = 1; i <= 500; i++) {
      record(feed, event(i));
      if (i % batch === 0) {
        feed.flush();
        most = Math.max(most, feed.maxBacklog());
      }
    }
    t.ok(most <= budget + batchBytes, `waiting at most ${most} <= ${budget} + one batch (${batchBytes})`);
    const kept = stalled.ids().length;
    t.ok(kept > 0 && kept < 500, `some kept (${kept}), the rest dropped`);
    t.equal(feed.droppedTotal, 500 - kept, 'every dropped decision is counted');
    t.equal(healthy.ids().length, 500, 'a healthy stream loses nothing to a stalled one');
    // The client takes what was waiting: the next flush says how many it missed.
    stalled.taken = stalled.text.length;
    stalled.stalled = false;
    record(feed, event(501));
    feed.flush();
    t.match(stalled.text, new RegExp(`event: dropped\\ndata: \\{"dropped":${500 - kept}\\}\\n\\n`));
    t.equal(stalled.ids().at(-1), 501);
    // Stalled again and for longer than stalledMs: closed, its slot freed.
    stalled.stalled = true;
    stalled.taken = 0;
    for (let i = 502; i <= 900; i++) record(feed, event(i));
    feed.flush();
    record(feed, event(901));
    feed.flush();
    await new Promise((r) => setTimeout(r, 120));
    t.ok(stalled.destroyed, 'the stalled stream is closed');
    t.equal(feed.subscriberCount, 1);
    t.notOk(healthy.destroyed);
    feed.close();
    t.ok(healthy.destroyed, 'close() ends every stream');
  },
);

t.test('a new stream over its budget starts with the newest decisions, not the oldest', async (t) => {
  const one = decisionLine(event(1)).length;
  // Room for about three frames of ~one line each.
  const feed = new DecisionFeed({ budgetBytes: Math.floor(one * 3.5), flushMs: 5 });
  for (let i = 1; i <= 10; i++) record(feed, event(i));
  const stream = new FakeStream(false);
  feed.subscribe(stream, () => true);
  t.same(stream.ids(), [8, 9, 10], 'the newest three, oldest first');
  t.equal(feed.droppedTotal, 7, 'the older seven counted as dropped');
  feed.close();
});

t.test('the number of streams is capped', async (t) => {
  const feed = new DecisionFeed({ maxSubscribers: 2 });
  t.ok(feed.subscribe(new FakeStream(false), () => true));
  const end = feed.subscribe(new FakeStream(false), () => true);
  t.equal(
    feed.subscribe(new FakeStream(false), () => true),
    null,
  );
  end?.();
  t.ok(
    feed.subscribe(new FakeStream(false), () => true),
    'a slot frees when a stream ends',
  );
  feed.close();
});

t.test('heartbeats keep an idle stream open', async (t) => {
  const feed = new DecisionFeed({ heartbeatMs: 10 });
  const s = new FakeStream(false);
  feed.subscribe(s, () => true);
  await new Promise((r) => setTimeout(r, 35));
  t.ok((s.text.match(/^: heartbeat$/gm) ?? []).length >= 2);
  feed.close();
});

t.test('with no stream, a decision costs a slot in the ring and no timer', async (t) => {
  const feed = new DecisionFeed();
  for (let i = 0; i < 3000; i++) record(feed, event(i));
  t.equal(feed.recent().length, 1000);
  t.equal((feed as unknown as { flushTimer: unknown }).flushTimer, null);
});

t.test('the event sink hands the feed the very line it writes, also when the log level hides decisions', async (t) => {
  const { createEventSink, createLogger } = await import('../../src/events/events.js');
  for (const level of ['info', 'warn']) {
    const written: string[] = [];
    const sink = createEventSink(createLogger(level, { write: (s: string) => void written.push(s) }));
    const feed = new DecisionFeed();
    sink.tapDecisions(feed);
    sink.decision(event(1));
    sink.deferredDecision(event(2));
    sink.flush();
    const fed = feed.recent().map((e) => e.line);
    t.equal(fed.length, 2, `${level}: both decisions fed`);
    const untimed = (l: string) => l.replace(/"time":"[^"]+"/, '');
    t.same(fed.map(untimed), [decisionLine(event(1)), decisionLine(event(2))].map(untimed), `${level}: the decision lines`);
    if (level === 'info')
      t.same(
        written.join('').split('\n').filter(Boolean),
        fed.map((l) => l.trimEnd()),
        'info: the log got the same lines',
      );
    else t.equal(written.length, 0, 'warn: the log got none');
    sink.tapDecisions(null);
    sink.decision(event(3));
    t.equal(feed.recent().length, 2, `${level}: untapped, the feed gets nothing more`);
  }
});
