/** Observe mode's discovered-destination store: counts, and bounds a flooding client cannot pass. */
import t from 'tap';
import { DiscoveredStore } from '../../src/state/discovered.js';

t.test('one entry per (server, tool, host, port), counted', async (t) => {
  const store = new DiscoveredStore();
  t.ok(store.record('srv', 'fetch', 'a.example', 443, undefined, new Date(0)), 'new');
  t.equal(store.record('srv', 'fetch', 'a.example', 443, undefined, new Date(1000)), null, 'seen before');
  t.ok(store.record('srv', null, 'a.example', 443), 'an unattributed call is another entry');
  t.ok(store.record('srv', '', 'a.example', 443), 'and so is an empty tool name');
  t.match(store.list()[0], { count: 2, first_seen: new Date(0).toISOString(), last_seen: new Date(1000).toISOString() });
  t.equal(store.list().length, 3);
});

t.test('bounded in entries and in the characters of client-chosen names', async (t) => {
  const few = new DiscoveredStore(3);
  for (let i = 0; i < 5; i++) few.record('srv', `t${i}`, 'a.example', 443);
  t.equal(few.list().length, 3);
  t.equal(few.dropped, 2);

  // Header-sized tool names: a client that invents one per call stops being recorded at the
  // character budget, long before the entry cap.
  const store = new DiscoveredStore(10_000, 100_000);
  const long = 'x'.repeat(10_000);
  let recorded = 0;
  for (let i = 0; i < 50; i++) if (store.record('srv', `${long}${i}`, 'a.example', 443)) recorded++;
  t.equal(recorded, 9, 'about 100,000 characters of names');
  t.equal(store.dropped, 41);
  t.ok(store.record('srv', 'short', 'a.example', 443), 'a short name still fits');
  t.equal(store.record('srv', `${long}0`, 'a.example', 443), null, 'a known entry is still counted');
  t.equal(store.list().find((e) => e.tool === `${long}0`)?.count, 2);
});
