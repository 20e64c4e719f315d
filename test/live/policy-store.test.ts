/**
 * The serving policy's loads, with the file's reads in the test's hands (each read waits until
 * the test answers it): every read is reported once, so a generation is announced even when a
 * read asked for meanwhile finds nothing new; callers during a read share the next one and get
 * its result; a read that throws or a broken file changes nothing, and a report that throws
 * fails its read's callers without stopping the store.
 */
import t from 'tap';
import { PolicyStore } from '../../src/live/policy-store.js';
import type { LoadAttempt, LoadResult } from '../../src/live/policy-store.js';
import { parsePolicy } from '../../src/policy/schema.js';
import type { PolicySpec } from '../../src/policy/types.js';
import { sha256Hex } from '../../src/config/secret-hash.js';

const ALLOW = 'version: 1\ndefault_verdict: allow\n';
const DENY = 'version: 1\ndefault_verdict: deny\n';
const BROKEN = 'version: 1\nrules: [\n';

/** A store whose reads wait for `answer(text)` (or `fail(err)`), in the order they were made. */
function heldStore() {
  const reads: Array<{ answer: (text: string) => void; fail: (err: Error) => void }> = [];
  const reports: LoadAttempt[] = [];
  const store = new PolicyStore('policy.yaml', {
    report: (attempt) => reports.push(attempt),
    read: (file) =>
      new Promise((resolve, reject) =>
        reads.push({ answer: (text) => resolve({ ...parsePolicy(file, text), bytes: Buffer.from(text) }), fail: reject }),
      ),
  });
  const settle = () => new Promise((r) => setImmediate(r));
  return {
    store,
    reports,
    reads: () => reads.length,
    async answer(text: string) {
      reads.at(-1)?.answer(text);
      await settle();
    },
    async fail(err: Error) {
      reads.at(-1)?.fail(err);
      await settle();
    },
  };
}

const summary = (r: LoadAttempt | LoadResult) =>
  r.ok
    ? `${'trigger' in r ? `${r.trigger}: ` : ''}generation ${r.generation.generation}${r.changed ? ' loaded' : ' unchanged'}`
    : `${'trigger' in r ? `${r.trigger}: ` : ''}rejected`;

t.test('a generation made by a read is announced though the next read finds nothing new', async (t) => {
  const h = heldStore();
  const start = h.store.load('start');
  await h.answer(ALLOW);
  t.equal(summary(await start), 'generation 1 loaded');

  // A SIGHUP's read is running when the watcher asks too; the watcher's read sees the same bytes.
  const sighup = h.store.load('SIGHUP');
  const watch = h.store.load('watch');
  t.equal(h.reads(), 2, 'the watcher waits for the next read');
  await h.answer(DENY);
  t.equal(h.reads(), 3, 'and it begins once the running one is done');
  await h.answer(DENY);
  t.same(h.reports.map(summary), ['start: generation 1 loaded', 'SIGHUP: generation 2 loaded', 'watch: generation 2 unchanged']);
  t.equal(summary(await sighup), 'generation 2 loaded', 'the SIGHUP hears of the generation its read made');
  t.equal(summary(await watch), 'generation 2 unchanged');
  t.equal(h.store.current.policy.defaultVerdict, 'deny');
});

t.test('callers during a read share the next one, named by the first of them, and get its bytes', async (t) => {
  const h = heldStore();
  const first = h.store.load('start');
  const during = [h.store.load('watch'), h.store.load('SIGHUP'), h.store.load('api')];
  await h.answer(ALLOW);
  t.equal(summary(await first), 'generation 1 loaded');
  t.equal(h.reads(), 2, 'one more read for the three');
  await h.answer(DENY);
  t.same(
    (await Promise.all(during)).map(summary),
    ['generation 2 loaded', 'generation 2 loaded', 'generation 2 loaded'],
    'the newest bytes win',
  );
  t.same(h.reports.map(summary), ['start: generation 1 loaded', 'watch: generation 2 loaded']);
  t.equal(h.reads(), 2, 'nothing asked since: no further read');

  const later = h.store.load('SIGHUP');
  t.equal(h.reads(), 3, 'a load after the last read is done starts one at once');
  await h.answer(DENY);
  t.equal(summary(await later), 'generation 2 unchanged');
});

t.test('a broken file, an unreadable one and a read that throws change nothing, and are each reported', async (t) => {
  const h = heldStore();
  const start = h.store.load('start');
  await h.answer(ALLOW);
  await start;

  const broken = h.store.load('SIGHUP');
  await h.answer(BROKEN);
  const result = await broken;
  t.equal(result.ok, false);
  t.match(h.store.lastError?.errors[0], /^policy\.yaml:3:1: error:/);
  t.equal(h.store.current.generation, 1, 'the last good generation keeps serving');
  t.equal(h.reports.at(-1)?.bytesSha256?.length, 64, 'the bytes that were judged are named');

  const thrown = h.store.load('watch');
  await h.fail(new Error('disk on fire'));
  t.equal((await thrown).ok, false);
  t.same(h.store.lastError?.errors, ['policy.yaml: cannot load policy: disk on fire']);
  t.equal(h.reports.at(-1)?.bytesSha256, null);
  t.equal(h.store.current.generation, 1);

  const good = h.store.load('api');
  t.equal(h.reads(), 4, 'a read that threw leaves the store able to read again');
  await h.answer(DENY);
  t.equal(summary(await good), 'generation 2 loaded');
  t.equal(h.store.lastError, null, 'a good file clears the error');
  t.same(h.reports.map(summary), ['start: generation 1 loaded', 'SIGHUP: rejected', 'watch: rejected', 'api: generation 2 loaded']);
});

t.test('the report comes before the caller hears, and from the real file by default', async (t) => {
  const order: string[] = [];
  const store = new PolicyStore(new URL('../../config/policy.yaml', import.meta.url).pathname, {
    report: (attempt) => order.push(`report ${attempt.trigger} ${attempt.ok}`),
  });
  await store.load('start').then((r) => order.push(`caller ${r.ok}`));
  t.same(order, ['report start true', 'caller true']);
  t.throws(() => new PolicyStore('nowhere.yaml').current, /no policy loaded/);
});

t.test('a report that throws fails the callers of its read, and the next load reads again', async (t) => {
  let throwing = true;
  const reported: string[] = [];
  const reads: string[] = [ALLOW, DENY, DENY];
  const store = new PolicyStore('policy.yaml', {
    report: (attempt) => {
      reported.push(attempt.trigger);
      if (throwing) throw new Error('log write ENOSPC');
    },
    read: async (file) => {
      const text = reads.shift() ?? DENY;
      return { ...parsePolicy(file, text), bytes: Buffer.from(text) };
    },
  });
  await t.rejects(store.load('start'), /ENOSPC/);
  t.equal(store.current.generation, 1, 'the read itself took effect');
  throwing = false;
  const next = await store.load('SIGHUP');
  t.equal(next.ok && next.generation.generation, 2, 'the store was not left waiting');
  t.same(reported, ['start', 'SIGHUP']);

  // A read that throws something other than an Error is still a rejected read.
  const odd = new PolicyStore('policy.yaml', {
    read: async () => {
      // eslint-disable-next-line @typescript-eslint/only-throw-error -- what is tested: a throw that is no Error
      throw null;
    },
  });
  const result = await odd.load('start');
  t.equal(result.ok, false);
  t.same(odd.lastError?.errors, ['policy.yaml: cannot load policy: null']);

  // Bytes that were read but could not be compiled: rejected, and named, so they are not read again.
  const reports: LoadAttempt[] = [];
  const uncompilable = new PolicyStore('policy.yaml', {
    report: (attempt) => reports.push(attempt),
    read: async () => ({
      spec: { rules: null } as unknown as PolicySpec,
      bytes: Buffer.from('x'),
      diagnostics: [],
      egressRules: 0,
      skippedRules: 0,
    }),
  });
  t.equal((await uncompilable.load('watch')).ok, false);
  t.match(uncompilable.lastError?.errors[0], /^policy\.yaml: cannot load policy: /);
  t.equal(reports[0]?.bytesSha256, sha256Hex(Buffer.from('x')));
});
