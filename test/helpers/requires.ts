/**
 * Skip reasons for tests that need something from the system (scripts/test-deps.json, the list
 * `npm test` installs from): `t.test(name, { skip: missing('curl') }, fn)`.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

interface Dependency {
  name: string;
  probe: string[];
  debian: string;
}

const { dependencies } = JSON.parse(readFileSync(new URL('../../scripts/test-deps.json', import.meta.url), 'utf8')) as {
  dependencies: Dependency[];
};
const cache = new Map<string, string | false>();

/** false when `name` is present; otherwise why the test is skipped. */
export function missing(name: string): string | false {
  const cached = cache.get(name);
  if (cached !== undefined) return cached;
  const dep = dependencies.find((d) => d.name === name);
  if (!dep) throw new Error(`${name} is not in scripts/test-deps.json`);
  const ok = spawnSync(dep.probe[0] as string, dep.probe.slice(1), { stdio: 'ignore' }).status === 0;
  const reason = ok ? false : `${name} is not installed (Debian package ${dep.debian}; \`npm test\` installs it when run as root with apt)`;
  cache.set(name, reason);
  return reason;
}
