#!/usr/bin/env node
// @ts-check
/**
 * The first step of `npm test`: make sure the system has what the tests need (scripts/test-deps.json,
 * the one list to extend). As root with apt-get it installs the missing Debian packages; otherwise,
 * or if that fails, it prints a loud banner naming what is missing and which tests will skip
 * because of it. Exit 1 only when a `required` entry is missing (the suite cannot run at all).
 *
 * MCP_EGRESS_TEST_DEPS=FILE reads another list (the step's own test); MCP_EGRESS_TEST_NO_INSTALL=1
 * only reports.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

const listFile = process.env.MCP_EGRESS_TEST_DEPS ?? new URL('./test-deps.json', import.meta.url);
/** @typedef {{ name: string, probe: [string, ...string[]], debian: string, required?: boolean, neededBy: string }} Dependency */
/** @type {unknown} */
const list = JSON.parse(readFileSync(listFile, 'utf8'));
const { dependencies } = /** @type {{ dependencies: Dependency[] }} */ (list);

const present = (/** @type {Dependency} */ dep) => spawnSync(dep.probe[0], dep.probe.slice(1), { stdio: 'ignore' }).status === 0;
const canInstall = () =>
  process.env.MCP_EGRESS_TEST_NO_INSTALL !== '1' &&
  process.getuid?.() === 0 &&
  spawnSync('apt-get', ['--version'], { stdio: 'ignore' }).status === 0;

let missing = dependencies.filter((d) => !present(d));
if (missing.length > 0 && canInstall()) {
  const packages = [...new Set(missing.map((d) => d.debian))];
  process.stderr.write(`test-deps: installing ${packages.join(' ')} (needed by the tests)\n`);
  const apt = (/** @type {string[]} */ args) =>
    spawnSync('apt-get', ['-o', 'DPkg::Lock::Timeout=300', ...args], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    }).status === 0;
  const ok = apt(['update', '-qq']) && apt(['install', '-y', '-qq', '--no-install-recommends', ...packages]);
  if (!ok) process.stderr.write(`test-deps: apt-get install ${packages.join(' ')} failed\n`);
  missing = dependencies.filter((d) => !present(d));
}

if (missing.length === 0) {
  process.stderr.write(`test-deps: all ${dependencies.length} test dependencies present\n`);
  process.exit(0);
}
const bar = '!'.repeat(78);
const why =
  process.getuid?.() !== 0
    ? 'not root'
    : spawnSync('apt-get', ['--version'], { stdio: 'ignore' }).status !== 0
      ? 'no apt-get'
      : process.env.MCP_EGRESS_TEST_NO_INSTALL === '1'
        ? 'MCP_EGRESS_TEST_NO_INSTALL=1'
        : 'apt-get failed';
const lines = [bar, `test-deps: MISSING TEST DEPENDENCIES (not installed: ${why})`];
for (const d of missing)
  lines.push(`  - ${d.name} (Debian package ${d.debian})${d.required ? ' REQUIRED' : ''}: tests SKIPPED: ${d.neededBy}`);
lines.push(`  install them with: apt-get install ${[...new Set(missing.map((d) => d.debian))].join(' ')}`, bar);
process.stderr.write(`${lines.join('\n')}\n`);
process.exit(missing.some((d) => d.required) ? 1 : 0);
