/** The off-heap ring of lines: bounded by count and by bytes, oldest out first, every kept line exactly as pushed. */
import t from 'tap';
import { LineRing } from '../../src/events/line-ring.js';

function held(ring: LineRing): Array<[number, string]> {
  const out: Array<[number, string]> = [];
  for (let seq = ring.first; seq <= ring.count; seq++) {
    const got = ring.get(seq);
    if (got !== null) out.push([seq, got.line]);
  }
  return out;
}

t.test('by count: the last `capacity` lines, with when each came', async (t) => {
  const ring = new LineRing(3, 1024);
  t.same(held(ring), []);
  t.equal(ring.get(1), null, 'nothing pushed yet');
  for (let i = 1; i <= 5; i++) t.equal(ring.push(`line ${i}\n`, 1000 + i), i);
  t.same(held(ring), [
    [3, 'line 3\n'],
    [4, 'line 4\n'],
    [5, 'line 5\n'],
  ]);
  t.equal(ring.get(4)?.at, 1004);
  t.equal(ring.get(2), null, 'pushed out');
  t.equal(ring.get(6), null, 'not yet pushed');
});

t.test('by bytes: a line needing the room of older ones pushes them out, oldest first, and never tears one', async (t) => {
  const ring = new LineRing(100, 64);
  const pushed: string[] = [];
  // Lengths that do not divide the buffer: the ring wraps at a different place each lap.
  for (let i = 0; i < 200; i++) {
    const line = `${i}:${'x'.repeat((i * 7) % 23)}é\n`;
    pushed.push(line);
    ring.push(line, i);
    const kept = held(ring);
    const bytes = kept.reduce((n, [, l]) => n + Buffer.byteLength(l), 0);
    if (bytes > 64) t.fail(`holds ${bytes} bytes in a 64-byte ring`);
    // Contiguous and the newest ones: exactly the tail of what was pushed.
    const seqs = kept.map(([s]) => s);
    if (seqs.at(-1) !== i + 1 || seqs.some((s, k) => k > 0 && s !== (seqs[k - 1] as number) + 1))
      t.fail(`not the newest run: ${seqs.join(',')}`);
    for (const [s, l] of kept) if (l !== pushed[s - 1]) t.fail(`line ${s} came back as ${JSON.stringify(l)}`);
  }
  t.ok(held(ring).length >= 2, 'more than one line fits');
});

t.test('wrapping with older lines left in the tail: they go first, then whatever the new line covers', async (t) => {
  const ring = new LineRing(10, 64);
  const line = (c: string, n: number) => `${c.repeat(n - 1)}\n`;
  ring.push(line('a', 20), 1); // 0..20
  ring.push(line('b', 20), 2); // 20..40
  ring.push(line('c', 20), 3); // 40..60
  ring.push(line('d', 10), 4); // wraps: 0..10, a out
  ring.push(line('e', 30), 5); // 10..40, b out; c stays in the tail
  t.same(
    held(ring).map(([s]) => s),
    [3, 4, 5],
  );
  ring.push(line('f', 30), 6); // no room after 40: wraps; c (the oldest, in the tail) goes, then d and e under it
  t.same(held(ring), [[6, line('f', 30)]]);
});

t.test('a line longer than the whole ring is counted and not kept; the others stay', async (t) => {
  const ring = new LineRing(10, 32);
  ring.push('short one\n', 1);
  t.equal(ring.push(`${'y'.repeat(40)}\n`, 2), 2);
  ring.push('short two\n', 3);
  t.equal(ring.get(2), null);
  t.same(
    held(ring).map(([, l]) => l),
    ['short one\n', 'short two\n'],
  );
});

t.test('a 1,000-line ring of decision-sized lines holds all 1,000', async (t) => {
  const ring = new LineRing(1000, 1000 * 2048);
  for (let i = 0; i < 2500; i++) ring.push(`{"conn_id":"c-${i}","pad":"${'p'.repeat(700)}"}\n`, i);
  t.equal(held(ring).length, 1000);
  t.equal(ring.first, 1501);
});
