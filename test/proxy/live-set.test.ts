/**
 * The list that holds open sockets, calls and tunnels (src/proxy/live-set.ts): Set semantics for
 * what the proxy uses (add, delete, size, iteration in insertion order), deleting the visited item
 * while iterating, and one item in several sets at once.
 */
import t from 'tap';
import { LiveSet } from '../../src/proxy/live-set.js';

const items = (n: number) => Array.from({ length: n }, (_, i) => ({ i }));
const ids = (set: LiveSet<{ i: number }>) => [...set].map((x) => x.i);

t.test('add, delete and size as a Set; iteration in insertion order', (t) => {
  const set = new LiveSet<{ i: number }>();
  const [a, b, c, d] = items(4) as [{ i: number }, { i: number }, { i: number }, { i: number }];
  t.same(ids(set), []);
  set.add(a).add(b).add(c);
  t.equal(set.size, 3);
  t.same(ids(set), [0, 1, 2]);
  set.add(b);
  t.equal(set.size, 3, 'adding an item twice adds nothing');
  t.equal(set.delete(d), false, 'deleting an absent item');
  t.equal(set.delete(b), true);
  t.equal(set.delete(b), false, 'deleted once only');
  t.same(ids(set), [0, 2]);
  t.equal(set.size, 2);
  set.add(b);
  t.same(ids(set), [0, 2, 1], 'added again, at the end');
  set.delete(a);
  set.delete(c);
  set.delete(b);
  t.equal(set.size, 0);
  t.same(ids(set), []);
  set.add(d);
  t.same(ids(set), [3], 'usable after being emptied');
  t.end();
});

t.test('the visited item may be deleted while iterating (the idle sweep does)', (t) => {
  const set = new LiveSet<{ i: number }>();
  for (const x of items(6)) set.add(x);
  const seen: number[] = [];
  for (const x of set) {
    seen.push(x.i);
    if (x.i % 2 === 0) set.delete(x);
  }
  t.same(seen, [0, 1, 2, 3, 4, 5], 'every item visited once');
  t.same(ids(set), [1, 3, 5]);
  t.equal(set.size, 3);
  for (const x of set) set.delete(x);
  t.equal(set.size, 0);
  t.same(ids(set), []);
  t.end();
});

t.test('an item can be in several sets; deleting from one leaves the others', (t) => {
  const one = new LiveSet<{ i: number }>();
  const two = new LiveSet<{ i: number }>();
  const [a, b] = items(2) as [{ i: number }, { i: number }];
  one.add(a).add(b);
  two.add(b).add(a);
  one.delete(a);
  t.same(ids(one), [1]);
  t.same(ids(two), [1, 0]);
  t.end();
});

t.test('an iteration holding an item deleted behind its back ends instead of looping', (t) => {
  const set = new LiveSet<{ i: number }>();
  const all = items(3);
  for (const x of all) set.add(x);
  const seen: number[] = [];
  for (const x of set) {
    seen.push(x.i);
    // Not allowed (only the visited item may go), but it must not hang: the next one goes.
    if (x.i === 0) set.delete(all[1] as { i: number });
    if (seen.length > 10) break;
  }
  t.ok(seen.length <= 3, `visited ${seen.join(',')}`);
  t.same(ids(set), [0, 2]);
  t.end();
});
