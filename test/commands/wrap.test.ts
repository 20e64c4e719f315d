/** `mcp-egress-proxy wrap`: arguments, environment, stdio, exit codes, signals, credentials, odd paths. */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { nodeOptionsWithPreload } from '../../src/commands/wrap.js';
import { runCli } from '../helpers/cli.js';
import { startTestProxy } from '../helpers/proxy.js';
import { CA_PATH, startUpstream } from '../helpers/upstream.js';

const run = promisify(execFile);
const ROOT = new URL('../../', import.meta.url).pathname;
const CLI = join(ROOT, 'dist/src/cli.js');

type Outcome = { code: number; stdout: string; stderr: string };
const settle = (p: Promise<{ stdout: string; stderr: string }>): Promise<Outcome> =>
  p.then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
const wrap = (args: string[], env: Record<string, string> = {}, cli = CLI, cwd = ROOT) =>
  settle(run(process.execPath, [cli, 'wrap', ...args], { cwd, env: { PATH: process.env.PATH ?? '', ...env } }));

t.test('bad arguments: exit 2 and a reason, never a secret', async (t) => {
  const cases: Array<[string, string[], Record<string, string>, RegExp]> = [
    ['no command', ['--proxy', 'http://127.0.0.1:3128'], {}, /no command to run/],
    ['no command after --', ['--'], {}, /no command to run/],
    ['unknown option', ['--proxi', 'x', '--', 'true'], {}, /unknown option --proxi/],
    ['option without value', ['--proxy'], {}, /--proxy needs a value/],
    [
      'password on the command line',
      ['--proxy', 'http://agent:s3cret-pw@127.0.0.1:3128', '--', 'true'],
      {},
      /carries a password: pass --user NAME and put the password in \$MCP_EGRESS_PASSWORD/,
    ],
    ['--user without the password variable', ['--user', 'agent', '--', 'true'], {}, /--user needs the password in \$MCP_EGRESS_PASSWORD/],
    ['not a URL', ['--proxy', '::s3cret-pw', '--', 'true'], {}, /the proxy is not a valid URL/],
    ['socks', ['--proxy', 'socks5://127.0.0.1:1080', '--', 'true'], {}, /must be an http:\/\/ or https:\/\/ URL/],
    ['MCP_EGRESS_PROXY not a URL', ['--', 'true'], { MCP_EGRESS_PROXY: 'nope s3cret-pw' }, /the proxy is not a valid URL/],
  ];
  for (const [name, args, env, message] of cases) {
    const r = await wrap(args, env);
    t.equal(r.code, 2, name);
    t.match(r.stderr, message, name);
    t.notMatch(r.stderr, /s3cret/, `${name}: no secret echoed`);
    t.equal(r.stdout, '', `${name}: stdout untouched`);
  }
  const help = await runCli(['wrap', '--help']);
  t.equal(help.code, 0);
  t.match(help.err, /usage: mcp-egress-proxy wrap \[--proxy URL\] \[--user NAME\]/);
  t.match((await runCli(['--help'])).out, /wrap\s+run an MCP server behind the proxy/);
  t.equal((await runCli(['wrap', '--', '/nonexistent/server'])).code, 127, 'a command that does not exist: 127');
});

t.test('NODE_OPTIONS: the preload as a quoted file URL, before what was there', async (t) => {
  t.equal(
    nodeOptionsWithPreload('/opt/my tools/dist/src/register/index.js', undefined),
    '--import="file:///opt/my%20tools/dist/src/register/index.js"',
  );
  t.equal(
    nodeOptionsWithPreload('/a"b\\c/index.js', '--max-old-space-size=100'),
    '--import="file:///a%22b%5Cc/index.js" --max-old-space-size=100',
  );
});

t.test('the child: proxy variables, NO_PROXY, the preload; exit code returned; stdio untouched', async (t) => {
  const probe = `process.stdout.write(JSON.stringify({ https: process.env.MCP_EGRESS_HTTPS_PROXY, hidden: process.env.HTTPS_PROXY === undefined, noProxy: process.env.MCP_EGRESS_NO_PROXY, password: process.env.MCP_EGRESS_PASSWORD ?? null, direct: process.env.MCP_EGRESS_ALLOW_DIRECT ?? null })); process.exit(7)`;
  const env = { HTTPS_PROXY: 'http://corporate.example:8080', NO_PROXY: '*', MCP_EGRESS_ALLOW_DIRECT: '1' };
  const r = await wrap(['--', process.execPath, '-e', probe], env);
  t.equal(r.code, 7, 'the exit code comes back');
  t.same(
    JSON.parse(r.stdout),
    { https: 'http://127.0.0.1:3128/', hidden: true, noProxy: '', password: null, direct: null },
    'default proxy; an inherited HTTPS_PROXY, NO_PROXY and opt-out are not used',
  );
  t.match(r.stderr, /routed through http:\/\/127\.0\.0\.1:3128 \(https\)/);

  const viaEnv = await wrap(['--no-proxy', 'localhost', '--', process.execPath, '-e', probe], { MCP_EGRESS_PROXY: 'http://10.0.0.5:3128' });
  t.match(JSON.parse(viaEnv.stdout), { https: 'http://10.0.0.5:3128/', noProxy: 'localhost' }, '$MCP_EGRESS_PROXY and --no-proxy');

  // Every byte value, CR/LF and a partial line pass through unchanged both ways.
  const bytes = Buffer.from([...Array(256).keys()]);
  const child = spawn(process.execPath, [CLI, 'wrap', '--', process.execPath, '-e', 'process.stdin.pipe(process.stdout)'], {
    env: { PATH: process.env.PATH ?? '' },
  });
  const out: Buffer[] = [];
  child.stdout.on('data', (c: Buffer) => out.push(c));
  child.stdin.end(Buffer.concat([bytes, Buffer.from('{"jsonrpc":"2.0"}\r\n'), bytes]));
  const code = await new Promise((resolve) => child.on('exit', resolve));
  t.equal(code, 0);
  t.same(Buffer.concat(out), Buffer.concat([bytes, Buffer.from('{"jsonrpc":"2.0"}\r\n'), bytes]), 'stdout is exactly the server output');
});

t.test('signals reach the server; a server killed by one gives 128 + its number', async (t) => {
  const start = (code: string) => {
    const child = spawn(process.execPath, [CLI, 'wrap', '--', process.execPath, '-e', code], {
      env: { PATH: process.env.PATH ?? '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const ready = new Promise<void>((resolve) => child.stdout.on('data', () => resolve()));
    const exit = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    return { child, ready, exit };
  };
  const handled = start(`process.on('SIGTERM', () => process.exit(42)); console.log('ready'); setInterval(() => {}, 1000)`);
  await handled.ready;
  handled.child.kill('SIGTERM');
  t.equal(await handled.exit, 42, 'SIGTERM forwarded; the server chose its exit code');
  const killed = start(`console.log('ready'); setInterval(() => {}, 1000)`);
  await killed.ready;
  killed.child.kill('SIGINT');
  t.equal(await killed.exit, 130, 'SIGINT forwarded; 128 + 2');
});

t.test('from any directory, from an install path with a space, with --user credentials', async (t) => {
  // An install whose path has a space in it, run from / : the preload is found by its absolute path.
  const base = join(mkdtempSync(join(tmpdir(), 'mep wrap ')), 'my tools');
  mkdirSync(base, { recursive: true });
  cpSync(join(ROOT, 'dist/src'), join(base, 'dist/src'), { recursive: true });
  cpSync(join(ROOT, 'package.json'), join(base, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(base, 'node_modules'));
  const password = 'p@ss w:rd/%';
  const sha = createHash('sha256').update(password).digest('hex');
  const plain = await startUpstream();
  const tls = await startUpstream('127.0.0.1', { tls: true });
  const proxy = await startTestProxy({
    policy: 'version: 1\ndefault_verdict: allow\n',
    config: `auth: {users: [{name: agent, password_sha256: "${sha}"}]}`,
  });
  t.teardown(async () => {
    await proxy.stop();
    await Promise.all([plain.close(), tls.close()]);
  });
  const script = join(base, 'server.mjs');
  writeFileSync(
    script,
    `const out = [];
for (const url of ['http://127.0.0.1:${plain.port}/p', 'https://127.0.0.1:${tls.port}/t']) out.push(await fetch(url).then((r) => r.status, (e) => e.message));
process.stdout.write(JSON.stringify(out));`,
  );
  const cli = join(base, 'dist/src/cli.js');
  const env = { NODE_EXTRA_CA_CERTS: CA_PATH, MCP_EGRESS_PASSWORD: password };
  const ok = await wrap(['--proxy', proxy.url, '--user', 'agent', '--', process.execPath, script], env, cli, '/');
  t.same(JSON.parse(ok.stdout), [200, 200], 'authenticated over HTTP and HTTPS');
  t.match(
    ok.stderr,
    /routed through http:\/\/agent:\*\*\*@127\.0\.0\.1:\d+ \(https\)/,
    'the preload from the spaced path ran, credentials redacted',
  );
  t.notMatch(ok.stderr, /p@ss|p%40ss/, 'the password is never printed');
  const decisions = proxy.events('egress.decision');
  t.equal(decisions.filter((d) => d.dispatched).length, 2);

  const noUser = await wrap(['--proxy', proxy.url, '--', process.execPath, script], env, cli, '/');
  t.match(
    JSON.parse(noUser.stdout),
    [/^fetch failed: proxy_auth_required: /, /^fetch failed: proxy_auth_required: /],
    'without --user the proxy asks for credentials, and the tool is told',
  );
});
