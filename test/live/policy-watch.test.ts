/**
 * The policy file's watcher, on a real directory: a change is loaded whether fs.watch or the
 * poll sees it; what counts as seen is what a load read (`expect`), so an edit made between the
 * start's read and the watch, or bytes a load could not read, are loaded later rather than
 * taken as loaded; a vanished file is not reloaded over and over; a busy neighbour in the same
 * directory does not hold a load off.
 */
import { appendFile, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import type { Test } from 'tap';
import { sha256Hex } from '../../src/config/secret-hash.js';
import { PolicyWatcher } from '../../src/live/policy-watch.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const digest = (text: string) => sha256Hex(Buffer.from(text));

async function watched(t: Test, text: string, loader: (watcher: PolicyWatcher, trigger: string) => void, pollMs = 50) {
  const dir = await mkdtemp(join(tmpdir(), 'mep-watch-'));
  const file = join(dir, 'policy.yaml');
  await writeFile(file, text);
  const triggers: string[] = [];
  const watcher: PolicyWatcher = new PolicyWatcher({
    file,
    debounceMs: 20,
    pollMs,
    reload: async (trigger) => {
      triggers.push(trigger);
      loader(watcher, trigger);
    },
  });
  t.teardown(async () => {
    watcher.stop();
    await rm(dir, { recursive: true, force: true });
  });
  return { file, triggers, watcher };
}

/** A loader that reads the file as the store does and tells the watcher what it read. */
const reading =
  (file: () => string, readable: () => boolean = () => true) =>
  (watcher: PolicyWatcher) =>
    watcher.expect(readable() ? digest(file()) : null);

t.test('an edit between the read at start and the watch is loaded', async (t) => {
  let current = 'version: 1\n# edited after the start read it\n';
  const w = await watched(t, current, (watcher) => reading(() => current)(watcher));
  w.watcher.start(digest('version: 1\n'));
  await sleep(400);
  t.same(w.triggers, ['poll'], 'loaded once, by the poll');

  current = 'version: 1\n# by rename\n';
  await writeFile(`${w.file}.tmp`, current);
  await rename(`${w.file}.tmp`, w.file);
  await sleep(400);
  t.equal(w.triggers.length, 2, 'a rename over the file is loaded once');
});

t.test('bytes a load could not read are read again, and a vanished file is not reloaded over and over', async (t) => {
  const text = 'version: 1\n# new\n';
  // First the loads fail before reading anything (they tell the watcher nothing), then they read.
  let phase: 'failing' | 'reading' | 'vanished' = 'failing';
  const w = await watched(t, text, (watcher) => {
    if (phase === 'reading') watcher.expect(digest(text));
    if (phase === 'vanished') watcher.expect(null);
  });
  w.watcher.start(digest('version: 1\n'));
  await sleep(400);
  const failedReads = w.triggers.length;
  t.ok(failedReads >= 2, `a load that read nothing is not taken as loaded (${failedReads} loads)`);
  phase = 'reading';
  await sleep(400);
  const afterGood = w.triggers.length;
  await sleep(400);
  t.equal(w.triggers.length, afterGood, 'once read, no more loads');

  phase = 'vanished';
  await rm(w.file);
  await sleep(400);
  const afterVanish = w.triggers.length;
  t.ok(afterVanish - afterGood >= 1 && afterVanish - afterGood <= 2, 'the vanished file is loaded (and rejected) once or twice');
  await sleep(400);
  t.equal(w.triggers.length, afterVanish, 'then left alone until it comes back');
});

t.test('a neighbour written more often than the debounce does not hold a load off', async (t) => {
  let current = 'version: 1\n';
  // No poll to fall back on within the test: only the watch can load the edit.
  const w = await watched(t, current, (watcher) => reading(() => current)(watcher), 60_000);
  w.watcher.start(digest(current));
  const log = join(w.file, '..', 'events.log');
  const busy = setInterval(() => void appendFile(log, 'x\n'), 5);
  t.teardown(() => clearInterval(busy));
  await sleep(100);
  current = 'version: 1\n# edited while the neighbour is busy\n';
  await writeFile(w.file, current);
  await sleep(400);
  t.same(w.triggers, ['watch'], 'loaded by the watch while the neighbour kept writing');
});
