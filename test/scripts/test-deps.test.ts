/** `npm test`'s dependency step (scripts/test-deps.mjs), on lists where something is missing. */
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';

const run = promisify(execFile);
const STEP = new URL('../../scripts/test-deps.mjs', import.meta.url).pathname;

async function step(t: { testdir(): string }, dependencies: unknown[]) {
  const list = join(t.testdir(), 'deps.json');
  writeFileSync(list, JSON.stringify({ dependencies }));
  return run(process.execPath, [STEP], { env: { ...process.env, MCP_EGRESS_TEST_DEPS: list, MCP_EGRESS_TEST_NO_INSTALL: '1' } }).then(
    (r) => ({ code: 0, stderr: r.stderr }),
    (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
  );
}

const absent = {
  name: 'absent-tool',
  probe: ['/nonexistent/absent-tool'],
  debian: 'absent-pkg',
  neededBy: 'test/x.test.ts (the x client)',
};
const here = { name: 'node', probe: [process.execPath, '--version'], debian: 'nodejs', neededBy: 'everything' };

t.test('a missing optional dependency: loud banner naming the package and the skipped tests, exit 0', async (t) => {
  const r = await step(t, [here, absent]);
  t.equal(r.code, 0);
  t.match(r.stderr, /MISSING TEST DEPENDENCIES \(not installed: MCP_EGRESS_TEST_NO_INSTALL=1\)/);
  t.match(r.stderr, /- absent-tool \(Debian package absent-pkg\): tests SKIPPED: test\/x\.test\.ts \(the x client\)/);
  t.match(r.stderr, /apt-get install absent-pkg/);
  t.notMatch(r.stderr, /- node /, 'what is present is not listed');
});

t.test('a missing required dependency stops the run', async (t) => {
  const r = await step(t, [{ ...absent, required: true }]);
  t.equal(r.code, 1);
  t.match(r.stderr, /absent-tool \(Debian package absent-pkg\) REQUIRED/);
});

t.test('all present: one quiet line', async (t) => {
  const r = await step(t, [here]);
  t.equal(r.code, 0);
  t.match(r.stderr, /^test-deps: all 1 test dependencies present\n$/);
});

t.test("the shipped list names every package .ci/run used to install by hand, and the containment test's", async (t) => {
  const { dependencies } = JSON.parse(readFileSync(new URL('../../scripts/test-deps.json', import.meta.url), 'utf8')) as {
    dependencies: Array<{ debian: string }>;
  };
  const packages = new Set(dependencies.map((d) => d.debian));
  for (const name of ['curl', 'iproute2', 'python3-requests', 'systemd', 'util-linux', 'iptables']) t.ok(packages.has(name), name);
});
