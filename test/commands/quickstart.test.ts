/**
 * The README's Quick start, as written, with no network (the test namespace has only lo): the
 * shipped config and policy, then the first example's curl to the metadata address prints the
 * JSON refusal the README shows, and the second example is refused by rule without DNS.
 */
import { execFile, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import t from 'tap';
import { missing } from '../helpers/requires.js';

const run = promisify(execFile);
const ROOT = new URL('../../', import.meta.url).pathname;
const README = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function listening(port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1', () => (s.destroy(), resolve(true)));
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('the proxy did not start');
}

/** The shell lines of the Quick start section's code blocks that run curl. */
function quickStartCurls(): string[] {
  const section = README.slice(README.indexOf('## Quick start'), README.indexOf('\n## ', README.indexOf('## Quick start') + 5));
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)].flatMap((m) => (m[1] as string).split('\n')).filter((l) => l.startsWith('curl '));
}

t.test('the Quick start examples work offline and show what the README says', { skip: missing('curl') }, async (t) => {
  const curls = quickStartCurls();
  t.equal(curls.length, 2, 'two curl examples');
  const port = await freePort();
  const proxy = spawn(process.execPath, ['dist/src/cli.js', 'serve', '--listen', `127.0.0.1:${port}`, '--admin-listen', 'off'], {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  t.teardown(() => proxy.kill('SIGTERM'));
  await listening(port);

  const asRun = (line: string) => line.replace('127.0.0.1:3128', `127.0.0.1:${port}`).replace(/\s+#.*$/, '');
  // The shell lines use only single quotes around whole words; split them the same way.
  const argv = (line: string) => [...asRun(line).matchAll(/'([^']*)'|(\S+)/g)].map((m) => m[1] ?? (m[2] as string)).slice(1);

  const metadata = await run('curl', argv(curls[0] as string));
  t.match(metadata.stdout, /^HTTP\/1\.1 403 Forbidden\r\n/, 'refused');
  const shownBody = /\n(\{"error":\{"code":"firewall_blocked","reason":"ssrf_baseline".*\})\n```/.exec(README)?.[1];
  t.ok(shownBody, 'the README shows the body');
  t.equal(metadata.stdout.split('\r\n\r\n')[1], shownBody, 'the body is exactly what the README shows');

  const exfil = await run('curl', argv(curls[1] as string));
  t.match(JSON.parse(exfil.stdout), {
    error: { code: 'firewall_blocked', reason: 'rule', rule: { id: 'deny-everything-else' }, tool: 'fetch_url' },
  });
});
