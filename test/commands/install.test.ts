/**
 * The README's install path without a published package: `npm install` of the clone's path puts
 * `mcp-egress-proxy` on the PATH (here: in a prefix), offline, and `wrap` works from anywhere.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';

const run = promisify(execFile);
const ROOT = new URL('../../', import.meta.url).pathname.replace(/\/$/, '');

t.test('npm install <path to the clone> gives a working mcp-egress-proxy binary', async (t) => {
  const prefix = mkdtempSync(join(tmpdir(), 'mep-install-'));
  await run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--prefix', prefix, ROOT], { cwd: prefix });
  const bin = join(prefix, 'node_modules/.bin/mcp-egress-proxy');
  const version = await run(bin, ['--version'], { cwd: '/' });
  t.match(version.stdout, /^\d+\.\d+\.\d+/);
  const wrapped = await run(
    bin,
    ['wrap', '--proxy', 'http://127.0.0.1:3128', '--', process.execPath, '-e', 'console.log(process.env.NODE_OPTIONS)'],
    { cwd: '/', env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root' } },
  );
  // (tap's process-info hook re-quotes NODE_OPTIONS in the children of tests, so look for the URL only)
  t.ok(
    wrapped.stdout.includes(`--import=file://${ROOT}/dist/src/register/index.js`) ||
      wrapped.stdout.includes(`--import="file://${ROOT}/dist/src/register/index.js"`),
    'the preload by its absolute path',
  );
  t.match(wrapped.stderr, /^mcp-egress-proxy\/register: fetch, http and https routed through http:\/\/127\.0\.0\.1:3128/m);
});
