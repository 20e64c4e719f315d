/**
 * `token`: a new random token printed once with its `admin.tokens` entry; the printed entry,
 * pasted into a real config, makes the printed token work against a real admin listener.
 */
import { createHash } from 'node:crypto';
import t from 'tap';
import { parse } from 'yaml';
import { runCli } from '../helpers/cli.js';
import { startTestProxyFor } from '../helpers/proxy.js';

function printed(out: string): { token: string; entry: { name: string; sha256: string; role: string } } {
  const lines = out.split('\n');
  const token = lines.find((l) => l !== '' && !l.startsWith('#')) as string;
  const yaml = lines.slice(lines.indexOf(token) + 1).join('\n');
  const entries = parse(yaml) as Array<{ name: string; sha256: string; role: string }>;
  return { token, entry: entries[0] as { name: string; sha256: string; role: string } };
}

t.test('prints a 256-bit token and its entry; the two agree', async (t) => {
  const r = await runCli(['token', '--name', 'gateway', '--role', 'developer']);
  t.equal(r.code, 0, r.err);
  t.equal(r.err, '');
  const { token, entry } = printed(r.out);
  t.match(token, /^[A-Za-z0-9_-]{43}$/, '32 bytes, base64url');
  t.equal(Buffer.from(token, 'base64url').length, 32);
  t.same(entry, { name: 'gateway', sha256: createHash('sha256').update(token).digest('hex'), role: 'developer' });
  t.equal(r.out.split(token).length - 1, 1, 'the token is printed once');
  const again = printed((await runCli(['token', '--name', 'gateway', '--role', 'developer'])).out);
  t.not(again.token, token, 'a new token every time');
});

t.test('usage errors exit 2; --help describes it', async (t) => {
  for (const args of [
    ['token', '--role', 'developer'],
    ['token', '--name', 'ci'],
    ['token', '--name', 'ci', '--role', 'admin'],
    ['token', '--name', 'has space', '--role', 'viewer'],
    ['token', '--name', 'x: y', '--role', 'viewer'],
    ['token', '--name', '', '--role', 'viewer'],
  ]) {
    const r = await runCli(args);
    t.equal(r.code, 2, args.join(' '));
    t.equal(r.out, '', 'nothing printed on stdout');
  }
  const help = await runCli(['token', '--help']);
  t.equal(help.code, 0);
  t.match(help.out, /--name <name>/);
  t.match(help.out, /--role <role>.*\n?.*choices: "viewer", "developer"/);
  t.match((await runCli(['--help'])).out, /token \[options\]/, 'listed in the top-level help');
});

t.test('the printed entry, pasted into the config, lets the printed token in with its role', async (t) => {
  const dev = printed((await runCli(['token', '--name', 'gw', '--role', 'developer'])).out);
  const viewer = printed((await runCli(['token', '--name', 'dash', '--role', 'viewer'])).out);
  const indent = (yaml: string) => yaml.replace(/^/gm, '    ');
  const entryYaml = (e: { name: string; sha256: string; role: string }) => `- name: ${e.name}\n  sha256: ${e.sha256}\n  role: ${e.role}`;
  const proxy = await startTestProxyFor(t, {
    policy: 'version: 1\n',
    config: `admin:\n  listen: 127.0.0.1:0\n  tokens:\n${indent(entryYaml(dev.entry))}\n${indent(entryYaml(viewer.entry))}\n`,
  });
  const port = (proxy.running.admin?.server.address() as { port: number }).port;
  const reload = (token?: string) =>
    fetch(`http://127.0.0.1:${port}/v1/reload`, { method: 'POST', headers: token ? { authorization: `Bearer ${token}` } : {} });
  t.equal((await reload(dev.token)).status, 200, 'the developer token reloads');
  t.equal((await reload(viewer.token)).status, 403, 'the viewer token may not');
  t.equal((await reload(dev.entry.sha256)).status, 401, 'the digest is not the token');
  t.equal((await reload()).status, 401, 'no token');
  const policy = await fetch(`http://127.0.0.1:${port}/v1/policy`, { headers: { authorization: `Bearer ${viewer.token}` } });
  t.equal(policy.status, 200, 'the viewer token reads');
});
