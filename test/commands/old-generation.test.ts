import { spawnSync } from 'node:child_process';
import t from 'tap';
import {
  BACK_TO_BACK_MS,
  HEADROOM_BYTES,
  HOLD_MS,
  HeadroomHold,
  growingPercentFor,
  keepOldGenerationHeadroom,
  operatorSetHeapGrowing,
} from '../../src/commands/old-generation.js';

const MiB = 1024 * 1024;

t.test('the percent leaves 32 MiB over a small old generation, V8 its own factor over a large one', (t) => {
  t.equal(HEADROOM_BYTES, 32 * MiB);
  t.equal(growingPercentFor(13 * MiB), 247, '13 MiB may grow by 32.1 MiB');
  t.equal(growingPercentFor(32 * MiB), 100);
  t.equal(growingPercentFor(64 * MiB), 50, 'at 64 MiB still held');
  t.equal(growingPercentFor(64 * MiB + 1), 0, 'above 64 MiB: V8 decides');
  t.equal(growingPercentFor(4 * MiB), 300, 'never beyond factor 4');
  t.equal(growingPercentFor(0), 0);
  t.end();
});

t.test('held only while full collections come back to back, released a minute after the last', (t) => {
  const old = 13 * MiB;
  const rows: Array<[string, number, boolean, number]> = [
    ['a first full collection: V8 decides', 10_000, true, 0],
    ['scavenges change nothing', 10_200, false, 0],
    ['a second one well apart: still V8', 10_000 + BACK_TO_BACK_MS + 500, true, 0],
    ['back to back: held', 10_000 + 2 * BACK_TO_BACK_MS, true, 247],
    ['held through scavenges', 20_000, false, 247],
    ['a full collection within the hold keeps it', 30_000, true, 247],
    ['a scavenge within a minute of it: still held', 30_000 + HOLD_MS, false, 247],
    ['a scavenge past the minute: released', 30_001 + HOLD_MS, false, 0],
    ['a lone full collection after: V8', 200_000, true, 0],
    ['back to back again: held', 200_000 + BACK_TO_BACK_MS - 1, true, 247],
    ['a full collection after the hold ran out: released', 200_000 + BACK_TO_BACK_MS + HOLD_MS + 1, true, 0],
  ];
  const hold = new HeadroomHold();
  for (const [name, at, major, percent] of rows) t.equal(hold.collected(at, major, old), percent, name);
  t.equal(new HeadroomHold().collected(0, true, 100 * MiB), 0, 'nothing held above 64 MiB');
  t.end();
});

t.test("the operator's own factor wins", (t) => {
  t.ok(operatorSetHeapGrowing(['--heap-growing-percent=50'], undefined));
  t.ok(operatorSetHeapGrowing([], '--max-old-space-size=512 --heap_growing_percent=20'));
  t.notOk(operatorSetHeapGrowing(['--max-old-space-size=512'], '--max-semi-space-size=8'));
  const stop = keepOldGenerationHeadroom({ execArgv: [], nodeOptions: '' });
  t.equal(keepOldGenerationHeadroom({ execArgv: [], nodeOptions: '' }), stop, 'one hold per process');
  stop();
  const again = keepOldGenerationHeadroom({ execArgv: [], nodeOptions: '' });
  t.not(again, stop, 'stopped: a new one can start');
  again();
  keepOldGenerationHeadroom({ execArgv: ['--heap-growing-percent=20'] })();
  t.end();
});

// The built module (npm test builds first), in its own process: V8's flags are process-wide.
const built = new URL('../../dist/src/commands/old-generation.js', import.meta.url).pathname;

/** The growing factors V8 printed for each limit it set, in a child whose old generation churns. */
function factorsUnderChurn(): Array<{ oldKb: number; factor: number }> {
  // Every second full collection counts as back to back here, so the hold starts with the second.
  const script = `import { keepOldGenerationHeadroom } from ${JSON.stringify(built)};
    keepOldGenerationHeadroom({ backToBackMs: 1e9 });
    const kept = [];
    let r = 0;
    const step = () => {
      for (let i = 0; i < 20000; i++) kept.push({ i, s: 'k' + i + r });
      if (kept.length > 140000) kept.splice(0, 20000);
      if (++r < 400) setTimeout(step, 1);
    };
    step();`;
  const child = spawnSync(process.execPath, ['--trace-gc-verbose', '--input-type=module', '-e', script], { encoding: 'utf8' });
  if (child.status !== 0) throw new Error(child.stderr);
  return [...child.stdout.matchAll(/\[HeapController\] Limit: old size: (\d+) KB.*\((\d+\.\d)\)/g)].map((m) => ({
    oldKb: Number(m[1]),
    factor: Number(m[2]),
  }));
}

t.test('held, the limits V8 sets follow the percent set at run time', (t) => {
  const held = factorsUnderChurn();
  t.ok(held.length >= 3, `${held.length} limits set`);
  // The percent is judged after each collection and read at the next limit: from the third on,
  // each factor is 1 + percent / 100 for an old generation about the size of the one before.
  for (const [i, limit] of held.entries()) {
    if (i < 2) continue;
    const expected = 1 + growingPercentFor((held[i - 1]?.oldKb ?? 0) * 1024) / 100;
    t.ok(Math.abs(limit.factor - expected) <= 0.4, `limit ${i + 1}: factor ${limit.factor}, percent says ${expected.toFixed(2)}`);
  }
  t.end();
});
