/** The `check` and `test` commands: output shapes and exit codes of interface.md. */
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { runCli } from '../helpers/cli.js';

const run = promisify(execFile);

async function tempFiles(files: Record<string, string>): Promise<Record<string, string>> {
  const dir = await mkdtemp(join(tmpdir(), 'mep-cli-'));
  const paths: Record<string, string> = {};
  for (const [name, text] of Object.entries(files)) {
    paths[name] = join(dir, name);
    await writeFile(paths[name], text);
  }
  return paths;
}

t.test('every shipped policy passes check', async (t) => {
  const examples = (await readdir('config/examples')).filter((f) => f.endsWith('.yaml')).map((f) => `config/examples/${f}`);
  t.ok(examples.length >= 6, 'allow-list, shadow roll-out, and the seed examples in both forms');
  const r = await runCli(['check', 'config/policy.yaml', ...examples]);
  t.equal(r.code, 0, r.err);
  t.equal(r.out.trim().split('\n').length, examples.length + 1, 'one summary per file');
  t.match(r.out, /config\/examples\/seed-allow-list-egress\.yaml: ok: 2 egress rules, 1 skipped/);
});

t.test('check: problems on stderr as FILE:LINE:COL, exit 1', async (t) => {
  const p = await tempFiles({
    'good.yaml': 'version: 1\nrules:\n  - {id: hold, priority: 1, verdict: pending_approval}\n',
    'bad.yaml': 'version: 1\nrules:\n  - {id: a, priority: 1, verdict: deny, egress: {deny: [10.0.0.1/8]}}\n',
  });
  const r = await runCli(['check', p['good.yaml'] as string, p['bad.yaml'] as string]);
  t.equal(r.code, 1);
  t.match(r.err, new RegExp(`${p['good.yaml']}:3:38: warning: rule 'hold': pending_approval`));
  t.match(r.err, new RegExp(`${p['bad.yaml']}:3:57: error: '10.0.0.1/8' has bits set`));
  t.match(r.out, /good\.yaml: ok: 0 egress rules, 1 skipped/);
  t.notMatch(r.out, /bad\.yaml/);
  const missing = await runCli(['check']);
  t.equal(missing.code, 2, 'usage error');
});

t.test('test: decision object and exit codes', async (t) => {
  const p = await tempFiles({
    'policy.yaml': `version: 1
rules:
  - {id: allow-api, priority: 10, label: API, verdict: allow, egress: {allow: [api.example.com]}}
  - {id: fetchers, priority: 20, verdict: allow, tool_name_glob: "http_*", egress: {allow: [docs.example.com]}}
`,
    'proxy.yaml': 'baseline:\n  allow_cidrs: [10.0.0.0/8]\ndns:\n  servers: ["127.0.0.1:1"]\n  timeout_ms: 200\n',
    'broken.yaml': 'version: 1\nrules: [\n',
    'badconfig.yaml': 'listen: nowhere\n',
  });
  const policy = p['policy.yaml'] as string;
  const allowed = await runCli(['test', policy, 'https://API.example.com./x', '--resolve', 'api.example.com=93.184.216.34,2606:4700::1']);
  t.equal(allowed.code, 0, allowed.err);
  const decision = JSON.parse(allowed.out);
  t.same(Object.keys(decision).slice(0, 7), ['verdict', 'dispatched', 'shadow', 'reason', 'rule', 'addresses', 'trace']);
  t.match(decision, {
    verdict: 'allow',
    dispatched: true,
    shadow: false,
    reason: 'rule',
    rule: { id: 'allow-api', label: 'API', priority: 10 },
    addresses: ['93.184.216.34', '2606:4700::1'],
  });
  t.equal(decision.trace.length, 2);

  const byTool = await runCli([
    'test',
    policy,
    'docs.example.com:443',
    '--tool',
    'http_get',
    '--server',
    'srv',
    '--resolve',
    'docs.example.com=93.184.216.35',
  ]);
  t.equal(byTool.code, 0);
  t.equal(JSON.parse(byTool.out).rule.id, 'fetchers');

  const unattributed = await runCli(['test', policy, 'docs.example.com:443']);
  t.equal(unattributed.code, 1, 'no tool: refused by the default, without DNS');
  t.match(JSON.parse(unattributed.out), { reason: 'default', addresses: [], dispatched: false });

  const metadata = await runCli(['test', policy, 'http://0xA9FEA9FE/']);
  t.equal(metadata.code, 1);
  t.match(JSON.parse(metadata.out), { reason: 'ssrf_baseline', address_class: 'metadata', addresses: ['169.254.169.254'] });

  const exempt = await runCli([
    'test',
    policy,
    'api.example.com:443',
    '--config',
    p['proxy.yaml'] as string,
    '--resolve',
    'api.example.com=10.1.2.3',
  ]);
  t.equal(exempt.code, 0, 'the config exempts 10.0.0.0/8 from the baseline');

  const dnsFails = await runCli(['test', policy, 'api.example.com:443', '--config', p['proxy.yaml'] as string]);
  t.equal(dnsFails.code, 1, 'no DNS answer: not dispatched');
  t.match(JSON.parse(dnsFails.out), { error: { code: 'dns_error' } });

  t.equal((await runCli(['test', p['broken.yaml'] as string, 'a.example:443'])).code, 2, 'invalid policy');
  t.equal((await runCli(['test', policy, 'a.example:443', '--config', p['badconfig.yaml'] as string])).code, 2, 'invalid config');
  t.equal((await runCli(['test', policy, 'a.example'])).code, 2, 'no port');
  t.equal((await runCli(['test', policy, 'ftp://a.example/'])).code, 2, 'bad scheme');
  t.equal((await runCli(['test', policy, 'a.example:443', '--resolve', 'nonsense'])).code, 2, 'bad --resolve');
  t.equal((await runCli(['test', policy, 'a.example:443', '--resolve', '1.2.3.4=1.2.3.4'])).code, 2, '--resolve key must be a name');
  t.equal((await runCli(['test', policy, 'a.example:443', '--resolve', 'a.example=not-an-ip'])).code, 2, '--resolve value must be an IP');
  t.equal((await runCli(['test', policy])).code, 2, 'missing destination');
  t.equal((await runCli(['nonsense'])).code, 2, 'unknown command');
  t.equal((await runCli(['--version'])).code, 0);
  const help = await runCli(['test', '--help']);
  t.equal(help.code, 0);
  t.match(help.out, /--resolve <host=ip,\.\.\.>/);
});

t.test('test: sequence clauses with --earlier, --session and --call-id', async (t) => {
  const p = await tempFiles({
    'policy.yaml': `version: 1
default_verdict: allow
rules:
  - id: no-egress-after-read
    priority: 1
    verdict: deny
    after: {tool_name_glob: "read_*", within_seconds: 600}
  - id: no-egress-after-internal
    priority: 2
    verdict: deny
    after: {hosts: [10.0.0.0/8], within_seconds: 300}
    egress: {allow: [api.openai.com]}
`,
  });
  const policy = p['policy.yaml'] as string;
  const base = [
    'test',
    policy,
    'evil.example:443',
    '--tool',
    'fetch',
    '--server',
    'srv',
    '--session',
    'S',
    '--resolve',
    'evil.example=93.184.216.34',
  ];

  const quiet = await runCli(base);
  t.equal(quiet.code, 0, quiet.err);
  const quietDecision = JSON.parse(quiet.out);
  t.equal(quietDecision.after, null, 'after is null when no sequence rule decided');
  t.same(Object.keys(quietDecision).slice(0, 8), ['verdict', 'dispatched', 'shadow', 'reason', 'rule', 'addresses', 'trace', 'after']);
  t.match(quietDecision.trace[0].not_matched, [
    { rule: 'no-egress-after-read', why: 'no earlier call matching after within 600 s' },
    { rule: 'no-egress-after-internal', why: 'no earlier call matching after within 300 s' },
  ]);

  const read = await runCli([...base, '--earlier', 'tool=search,seconds_ago=5', '--earlier', 'tool=read_file,seconds_ago=30,call_id=r-1']);
  t.equal(read.code, 1, 'blocked by the sequence rule');
  t.match(JSON.parse(read.out), {
    dispatched: false,
    rule: { id: 'no-egress-after-read' },
    after: { tool: 'read_file', call_id: 'r-1', server: 'srv', session_id: 'S', host: null, seconds_ago: 30 },
  });

  t.equal((await runCli([...base, '--earlier', 'tool=read_file,seconds_ago=700'])).code, 0, 'outside the window');
  t.equal(
    (await runCli([...base, '--call-id', 'r-1', '--earlier', 'tool=read_file,seconds_ago=30,call_id=r-1'])).code,
    0,
    'a call does not follow itself',
  );

  const internal = await runCli([...base, '--earlier', 'tool=fetch,seconds_ago=10,host=wiki.internal,address=10.1.2.3']);
  t.equal(internal.code, 1);
  t.match(JSON.parse(internal.out), {
    rule: { id: 'no-egress-after-internal' },
    after: { tool: 'fetch', host: 'wiki.internal', seconds_ago: 10 },
  });
  t.equal((await runCli([...base, '--earlier', 'tool=fetch,seconds_ago=10,host=10.1.2.3'])).code, 1, 'an IP host is the address dialled');
  t.equal((await runCli([...base, '--earlier', 'tool=fetch,seconds_ago=10,host=10.1.2.3,refused'])).code, 0, 'a refused call read nothing');
  t.equal(
    (
      await runCli([
        'test',
        policy,
        'api.openai.com:443',
        '--tool',
        'fetch',
        '--resolve',
        'api.openai.com=93.184.216.34',
        '--earlier',
        'tool=fetch,seconds_ago=10,address=10.1.2.3',
      ])
    ).code,
    0,
    'exempt',
  );

  const bad: Array<[string[], RegExp]> = [
    [['--earlier', 'seconds_ago=5'], /tool is required/],
    [['--earlier', 'tool=read_file'], /seconds_ago is required/],
    [['--earlier', 'tool=read_file,seconds_ago=-1'], /seconds_ago must be a number of seconds from 0/],
    [['--earlier', 'tool=read_file,seconds_ago=1e3'], /seconds_ago must be a number/],
    [['--earlier', 'tool=read_file,seconds_ago=5,colour=red'], /expected tool=T,seconds_ago=N/],
    [['--earlier', 'tool=read_file,seconds_ago=5,tool=x'], /tool given twice/],
    [['--earlier', 'tool=read_file,seconds_ago=5,refused'], /refused applies only to an egress call/],
    [['--earlier', 'tool=fetch,seconds_ago=5,host=a b'], /host must be a host name or an IP address/],
    [['--earlier', 'tool=fetch,seconds_ago=5,address=wiki.internal'], /address must be an IP address/],
    [['--earlier', 'tool=fetch,seconds_ago=5,call_id=a b'], /call_id must be 1 to 256 visible ASCII/],
    [['--earlier', 'tool=,seconds_ago=5'], /tool must be a string of 1 to 256/],
    [['--session', ''], /--session must be/],
    [['--call-id', 'x y'], /--call-id must be/],
  ];
  for (const [args, message] of bad) {
    const r = await runCli([...base, ...args]);
    t.equal(r.code, 2, args.join(' '));
    t.match(r.err, message);
    t.equal(r.out, '', 'nothing printed on stdout');
  }
  const help = await runCli(['test', '--help']);
  t.match(help.out, /--earlier <tool=T,seconds_ago=N,\.\.\.>/);
  t.match(help.out, /--session <id>/);
  t.match(help.out, /--call-id <id>/);
});

t.test('the built binary runs', async (t) => {
  const { stdout } = await run(process.execPath, ['dist/src/cli.js', 'check', 'config/policy.yaml']);
  t.match(stdout, /config\/policy\.yaml: ok: 5 egress rules, 0 skipped/);
  const failed = await run(process.execPath, ['dist/src/cli.js', 'test', 'config/policy.yaml', 'evil.example:443']).catch(
    (e: { code: number; stdout: string }) => e,
  );
  t.equal((failed as { code: number }).code, 1);
});

t.test("test: the proxy's own listeners are refused as self, as the live proxy refuses them", async (t) => {
  const p = await tempFiles({
    'policy.yaml': 'version: 1\ndefault_verdict: allow\n',
    // Loopback exempt from the baseline, so only `self` can refuse the listener addresses.
    'proxy.yaml': 'listen: 127.0.0.1:3999\nadmin: {listen: 127.0.0.1:9999}\nbaseline: {allow_cidrs: [127.0.0.0/8, "::1/128"]}\n',
    'wild.yaml': 'listen: "[::]:4999"\nadmin: {listen: "off"}\nbaseline: {allow_cidrs: [127.0.0.0/8, 10.0.0.0/8]}\n',
  });
  const policy = p['policy.yaml'] as string;
  const config = p['proxy.yaml'] as string;
  for (const destination of ['127.0.0.1:3999', 'http://127.0.0.1:9999/v1/calls', '0.0.0.0:3999', 'self.example:3999']) {
    const r = await runCli(['test', policy, destination, '--config', config, '--resolve', 'self.example=127.0.0.1']);
    t.equal(r.code, 1, `${destination}: refused`);
    t.match(JSON.parse(r.out), { dispatched: false, reason: 'ssrf_baseline', address_class: 'self' }, destination);
  }
  const other = await runCli(['test', policy, '127.0.0.1:4000', '--config', config]);
  t.equal(other.code, 0, 'another loopback port (exempt) is not self');
  const wild = await runCli(['test', policy, '127.0.0.7:4999', '--config', p['wild.yaml'] as string]);
  t.match(JSON.parse(wild.out), { address_class: 'self' }, 'a wildcard listener takes every loopback address');
  const defaults = await runCli(['test', policy, '127.0.0.1:3128']);
  t.match(JSON.parse(defaults.out), { address_class: 'self' }, 'without --config, the default listen address');
});
