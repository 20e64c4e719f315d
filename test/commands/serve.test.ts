/**
 * `serve` as a real process: listening events with real ports, SIGHUP reload (a broken file
 * changes nothing; every new generation announced once, however reloads overlap), signals from
 * the first line on (none ends the process unhandled), SIGTERM with an open tunnel (stop
 * accepting, let it finish, write every event, exit 0; a second one at once), and refusing to
 * start on a broken config or policy (closing what the start opened: the state store, the
 * proxy's listener when its event line cannot be written), and ending with status 1 when
 * accepting is stuck failing (test/fixtures/stuck-accept.mjs).
 */
import { readFile, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import t from 'tap';
import type { Test } from 'tap';
import { connectRequest, getRequest, rawRequest } from '../helpers/raw.js';
import { startUpstream } from '../helpers/upstream.js';
import { files, serve } from '../helpers/serve-process.js';
import { freePort } from '../helpers/redis.js';
import { startProxy } from '../../src/commands/serve.js';
import { parseProxyConfig } from '../../src/config/proxy-config.js';
import type { ProxyConfig } from '../../src/config/proxy-config.js';
import { createEventSink, createLogger } from '../../src/events/events.js';
import { ACCEPT_STUCK_MS } from '../../src/net/accept.js';

const config =
  'listen: 127.0.0.1:0\npolicy: policy.yaml\nadmin: {listen: "off"}\nbaseline: {allow_cidrs: [127.0.0.0/8]}\nshutdown_grace_ms: 3000\n';

t.test('listening, reload, graceful shutdown', async (t) => {
  const upstream = await startUpstream();
  t.teardown(() => upstream.close());
  const f = await files('version: 1\ndefault_verdict: allow\n', config);
  const s = serve([], { MCP_EGRESS_CONFIG: f.config });
  t.teardown(() => s.kill());
  const listening = await s.waitFor((e) => e.event === 'listening');
  t.match(listening, { listener: 'proxy', address: '127.0.0.1' });
  const port = listening.port as number;
  t.ok(port > 0, 'the real port, not 0');

  // Reload: a broken file changes nothing, a good one takes over.
  await writeFile(f.policy, 'version: 1\nrules: [\n');
  s.child.kill('SIGHUP');
  const rejected = await s.waitFor((e) => e.event === 'policy.rejected');
  t.match((rejected.errors as string[])[0], /policy\.yaml:3:1: error:/);
  const stillAllowed = await rawRequest(port, getRequest(`http://127.0.0.1:${upstream.port}/`, `127.0.0.1:${upstream.port}`));
  t.equal(stillAllowed.status, 200, 'the previous policy keeps serving');
  await writeFile(f.policy, 'version: 1\ndefault_verdict: deny\n');
  s.child.kill('SIGHUP');
  await s.waitFor((e) => e.event === 'policy.loaded' && e.generation === 2);
  const nowDenied = await rawRequest(port, getRequest(`http://127.0.0.1:${upstream.port}/`, `127.0.0.1:${upstream.port}`));
  t.equal(nowDenied.status, 403);
  t.match(
    s.lines.filter((e) => e.event === 'egress.decision').map((e) => e.policy_generation),
    [1, 2],
  );

  // An open tunnel keeps its decision and may finish during the grace period.
  await writeFile(f.policy, 'version: 1\ndefault_verdict: allow\n');
  s.child.kill('SIGHUP');
  await s.waitFor((e) => e.event === 'policy.loaded' && e.generation === 3);
  const tunnel = connect({ host: '127.0.0.1', port });
  const tunnelClosed = new Promise((r) => tunnel.once('close', r));
  tunnel.on('error', () => {});
  let got = '';
  tunnel.on('data', (d: Buffer) => (got += d.toString()));
  tunnel.write(connectRequest(`127.0.0.1:${upstream.port}`));
  await new Promise((r) => tunnel.once('data', r));
  s.child.kill('SIGTERM');
  await s.waitFor((e) => e.event === 'shutdown');
  const refusedNew = await rawRequest(port, connectRequest(`127.0.0.1:${upstream.port}`), 1000).catch((e: Error) => e);
  t.ok(refusedNew instanceof Error || refusedNew.status === 0, 'no new connections after SIGTERM');
  tunnel.write(`GET /during-shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
  await tunnelClosed;
  t.match(got, /during-shutdown/, 'the open tunnel finished its request');
  t.equal(await s.exit, 0, 'exit 0');
  const connectDecision = s.lines.find((e) => e.event === 'egress.decision' && e.method === 'CONNECT');
  const closed = s.lines.find((e) => e.event === 'egress.closed' && e.conn_id === connectDecision?.conn_id && (e.bytes_up as number) > 0);
  t.ok(closed, 'the tunnel closed event was written before exit');
  t.equal(s.lines.at(-1)?.event, 'stopped', 'the last line is written');
});

/** `serve` with `shutdown_grace_ms: graceMs` and one CONNECT tunnel open through it (decided). */
async function servingATunnel(t: Test, graceMs: number, args: string[] = []) {
  const upstream = await startUpstream();
  t.teardown(() => upstream.close());
  const f = await files('version: 1\ndefault_verdict: allow\n', config.replace('shutdown_grace_ms: 3000', `shutdown_grace_ms: ${graceMs}`));
  const s = serve(['--config', f.config, ...args]);
  t.teardown(() => s.kill());
  const port = (await s.waitFor((e) => e.event === 'listening')).port as number;
  const tunnel = connect({ host: '127.0.0.1', port });
  tunnel.on('data', () => {});
  tunnel.on('error', () => {});
  t.teardown(() => tunnel.destroy());
  tunnel.write(connectRequest(`127.0.0.1:${upstream.port}`));
  await s.waitFor((e) => e.event === 'egress.decision');
  return { s, tunnel };
}

t.test('open calls past the grace period end with shutdown', async (t) => {
  const { s } = await servingATunnel(t, 200, ['--listen', '127.0.0.1:0', '--admin-listen', 'off']);
  s.child.kill('SIGINT');
  t.equal(await s.exit, 0);
  t.ok(
    s.lines.find((e) => e.event === 'egress.closed' && e.end === 'shutdown'),
    'ended by shutdown, and logged',
  );
});

t.test('overlapping reloads: every generation announced once', async (t) => {
  // A SIGHUP right after each write while the watcher sees the same write: two loads overlap,
  // and the one that makes the generation must announce it even when the other finds nothing new.
  const f = await files('version: 1\ndefault_verdict: allow\n', config);
  const s = serve(['--config', f.config]);
  t.teardown(() => s.kill());
  await s.waitFor((e) => e.event === 'listening');
  const rounds = 12;
  for (let round = 2, wrote = 0; round <= rounds + 1; round++) {
    // The watcher reads about 100 ms (its debounce) after the previous write: write then.
    await new Promise((r) => setTimeout(r, wrote + 95 + (round % 4) * 5 - Date.now()));
    await writeFile(f.policy, `version: 1\ndefault_verdict: ${round % 2 ? 'allow' : 'deny'}\n# round ${round}\n`);
    wrote = Date.now();
    s.child.kill('SIGHUP');
    await s.waitFor((e) => e.event === 'policy.loaded' && e.generation === round);
  }
  // Let the watcher's loads of the last write finish before counting.
  await new Promise((r) => setTimeout(r, 300));
  const loaded = s.lines.filter((e) => e.event === 'policy.loaded').map((e) => e.generation);
  t.same(
    loaded,
    Array.from({ length: rounds + 1 }, (_, i) => i + 1),
    'each generation once, in order',
  );
});

t.test('signals from the first line on: a SIGHUP is a reload, a SIGTERM a clean stop', async (t) => {
  const f = await files('version: 1\ndefault_verdict: allow\n', config);
  // Sent the moment the first event line (state.store) is read: the proxy is still starting.
  const hup = serve(['--config', f.config]);
  t.teardown(() => hup.kill());
  hup.child.stdout?.once('data', () => hup.child.kill('SIGHUP'));
  const port = (await hup.waitFor((e) => e.event === 'listening')).port as number;
  await new Promise((r) => setTimeout(r, 200));
  t.equal(hup.child.exitCode ?? hup.child.signalCode, null, 'alive after the SIGHUP');
  const upstream = await startUpstream();
  t.teardown(() => upstream.close());
  const served = await rawRequest(port, getRequest(`http://127.0.0.1:${upstream.port}/`, `127.0.0.1:${upstream.port}`));
  t.equal(served.status, 200, 'and serving');
  hup.child.kill('SIGTERM');
  t.equal(await hup.exit, 0);

  const term = serve(['--config', f.config]);
  t.teardown(() => term.kill());
  term.child.stdout?.once('data', () => term.child.kill('SIGTERM'));
  t.equal(await term.exit, 0, 'exit 0, not death by signal');
  t.match(
    term.lines.map((e) => e.event),
    ['state.store', 'policy.loaded', 'baseline.exemptions', 'listening', 'shutdown', 'stopped'],
    'it started, then stopped as it would have once running',
  );
  t.match(
    term.lines.find((e) => e.event === 'shutdown'),
    { signal: 'SIGTERM' },
  );
});

t.test('a second SIGTERM does not wait for the grace period', async (t) => {
  const { s } = await servingATunnel(t, 60_000);
  s.child.kill('SIGTERM');
  await s.waitFor((e) => e.event === 'shutdown');
  const began = Date.now();
  s.child.kill('SIGTERM');
  await s.exit;
  t.equal(s.child.signalCode, 'SIGTERM', 'ended by the signal itself');
  t.ok(Date.now() - began < 10_000, 'at once, not after the 60 s grace');
});

t.test('a start whose listening line cannot be written fails and leaves nothing listening', async (t) => {
  const port = await freePort();
  const f = await files('version: 1\n', config.replace('listen: 127.0.0.1:0', `listen: 127.0.0.1:${port}`));
  const parsed = parseProxyConfig(f.config, await readFile(f.config, 'utf8'));
  const written: string[] = [];
  const logFullAtListening = {
    write(line: string) {
      if (line.includes('"event":"listening"')) throw new Error('ENOSPC: no space left on device, write');
      written.push(line);
    },
  };
  const events = createEventSink(createLogger('info', logFullAtListening));
  await t.rejects(startProxy(parsed.config as ProxyConfig, events, { watch: false }), /ENOSPC/);
  t.ok(
    written.some((l) => l.includes('"event":"policy.loaded"')),
    'the start got as far as listening',
  );
  const refused = await new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => resolve('connected'));
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code));
    t.teardown(() => socket.destroy());
  });
  t.equal(refused, 'ECONNREFUSED', 'the listener is closed again');
});

t.test('refuses to start on a broken config or policy', async (t) => {
  const badPolicy = await files('version: 1\nrules:\n  - {priority: x, verdict: deny}\n', config);
  const a = serve(['--config', badPolicy.config]);
  t.equal(await a.exit, 1);
  t.ok(a.lines.some((e) => e.event === 'policy.rejected'));
  t.notOk(
    a.lines.some((e) => e.event === 'listening'),
    'nothing listens',
  );
  t.match(a.stderr(), /not valid; not serving/);

  const badConfig = await files('version: 1\n', 'listen: nowhere\n');
  const b = serve(['--config', badConfig.config]);
  t.equal(await b.exit, 1);
  t.match(b.stderr(), /proxy\.yaml:1:9: error: listen: 'nowhere' is not HOST:PORT/);

  const c = serve(['--config', badConfig.config.replace('proxy.yaml', 'missing.yaml')]);
  t.equal(await c.exit, 1);
  t.match(c.stderr(), /cannot read config file: ENOENT/);

  const good = await files('version: 1\n', config);
  const d = serve(['--config', good.config, '--listen', 'bogus']);
  t.equal(await d.exit, 2);
  t.match(d.stderr(), /--listen:/);
  const e = serve(['--config', good.config, '--admin-listen', 'bogus']);
  t.equal(await e.exit, 2);

  // A tokenless admin API off loopback: refused before anything listens, with a position.
  const open = await files('version: 1\n', config.replace('admin: {listen: "off"}', 'admin: {listen: 0.0.0.0:0}'));
  const f = serve(['--config', open.config]);
  t.equal(await f.exit, 1);
  t.match(f.stderr(), /proxy\.yaml:3:17: error: admin\.listen: 0\.0\.0\.0 is not a loopback address, and no admin\.tokens are configured/);
  t.notOk(
    f.lines.some((l) => l.event === 'listening'),
    'nothing listens',
  );
  const g = serve(['--config', good.config, '--admin-listen', '0.0.0.0:0']);
  t.equal(await g.exit, 2);
  t.match(g.stderr(), /--admin-listen: 0\.0\.0\.0 is not a loopback address, and no admin\.tokens are configured/);
  t.notOk(
    g.lines.some((l) => l.event === 'listening'),
    'nothing listens',
  );
  // With Redis as the state store (here one that refuses connections) a broken policy still
  // ends the process: the store's connection is closed again.
  const withRedis = await files('version: 1\nrules: [\n', `${config}state: {store: redis, redis_url: "redis://127.0.0.1:1/0"}\n`);
  const r = serve(['--config', withRedis.config]);
  t.teardown(() => r.kill());
  const ended = await Promise.race([r.exit, new Promise((resolve) => setTimeout(() => resolve('still running after 10 s'), 10_000))]);
  t.equal(ended, 1, 'exit 1, not left running');

  // trust: registered without tokens and users: refused, naming both keys.
  const registered = await files('version: 1\n', `${config}attribution: {trust: registered}\n`);
  const h = serve(['--config', registered.config]);
  t.equal(await h.exit, 1);
  t.match(h.stderr(), /proxy\.yaml:6:\d+: error: attribution\.trust: registered needs admin\.tokens/);
  t.match(h.stderr(), /proxy\.yaml:6:\d+: error: attribution\.trust: registered needs auth\.users/);
  t.notOk(
    h.lines.some((l) => l.event === 'listening'),
    'nothing listens',
  );
});

t.test('a listener stuck failing to accept ends the process with its events written', async (t) => {
  const f = await files('version: 1\ndefault_verdict: allow\n', config);
  const preload = new URL('../fixtures/stuck-accept.mjs', import.meta.url).pathname;
  const started = Date.now();
  const s = serve([], { MCP_EGRESS_CONFIG: f.config, NODE_OPTIONS: `--import ${preload}` });
  t.teardown(() => s.kill());
  const code = await Promise.race([s.exit, new Promise((r) => setTimeout(() => r('still running'), 10_000))]);
  t.equal(code, 1, 'exits with status 1 for its supervisor (neither hangs nor dies of an uncaught error)');
  t.ok(Date.now() - started >= ACCEPT_STUCK_MS, 'not before the failures lasted ACCEPT_STUCK_MS');
  const failed = s.lines.filter((e) => e.event === 'accept_failed');
  t.match(failed[0], { level: 'warn', listener: 'proxy', code: 'EMFILE', not_reported: 0 }, 'the first failure, at once');
  const stuck = failed.at(-1) ?? {};
  t.match(stuck, { listener: 'proxy', code: 'EMFILE', msg: /exiting$/ }, 'the last line says why it exits');
  t.ok((stuck.failures as number) > 1 && (stuck.stuck_ms as number) >= ACCEPT_STUCK_MS, 'with how many and how long');
  t.notMatch(s.stderr(), /Uncaught|ErrnoException|EMFILE/, 'no uncaught error');
});
