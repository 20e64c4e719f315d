/**
 * Reload under load: 200 tunnels open and streaming while the policy file is rewritten 50 times
 * (in place, by rename, by a `..data` symlink swap as Kubernetes does, and with broken content
 * in between). No tunnel is dropped, every new call is decided by one complete generation, no
 * broken version is ever served, and a good write takes effect within a second.
 */
import { createHash } from 'node:crypto';
import { mkdir, rename, symlink, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import { startTestProxy } from '../helpers/proxy.js';
import { connectRequest, rawRequest } from '../helpers/raw.js';
import { startTrap } from '../helpers/upstream.js';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';

const allowPolicy = (n: number) => `# version ${n}\nversion: 1\ndefault_verdict: allow\n`;
const denyPolicy = (n: number) => `# version ${n}\nversion: 1\ndefault_verdict: deny\n`;

async function echoServer(): Promise<{ port: number; close(): Promise<void> }> {
  const server = createServer((s) => {
    s.on('error', () => {});
    s.pipe(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { port: (server.address() as AddressInfo).port, close: () => new Promise((r) => server.close(() => r())) };
}

async function waitUntil(check: () => Promise<boolean>, ms: number): Promise<number> {
  const started = Date.now();
  while (Date.now() - started < ms) {
    if (await check()) return Date.now() - started;
    await new Promise((r) => setTimeout(r, 20));
  }
  return Infinity;
}

t.test('reload under load', async (t) => {
  const echo = await echoServer();
  const trap = await startTrap('127.0.0.1', 0);
  const proxy = await startTestProxy({ policy: allowPolicy(0), config: 'limits: {max_tunnels_per_client: 1000}' });
  t.teardown(async () => {
    await proxy.stop();
    await echo.close();
    await trap.close();
  });

  // Kubernetes layout: policy.yaml -> ..data/policy.yaml, ..data -> ..<version>/
  const dir = proxy.dir;
  let version = 0;
  const kubeWrite = async (text: string) => {
    version++;
    const versionDir = join(dir, `..v${version}`);
    await mkdir(versionDir);
    await writeFile(join(versionDir, 'policy.yaml'), text);
    await symlink(`..v${version}`, join(dir, '..data_tmp'));
    await rename(join(dir, '..data_tmp'), join(dir, '..data'));
  };
  const inPlace = (text: string) => writeFile(proxy.policyFile, text);
  const byRename = async (text: string) => {
    await writeFile(`${proxy.policyFile}.tmp`, text);
    await rename(`${proxy.policyFile}.tmp`, proxy.policyFile);
  };

  // 200 tunnels, each streaming through the echo server for the whole test.
  const tunnels: Array<{ socket: Socket; sent: number; received: number; closed: boolean }> = [];
  await Promise.all(
    Array.from({ length: 200 }, async () => {
      const socket = connect({ host: '127.0.0.1', port: proxy.port });
      const tunnel = { socket, sent: 0, received: 0, closed: false };
      tunnels.push(tunnel);
      socket.on('close', () => (tunnel.closed = true));
      socket.write(connectRequest(`127.0.0.1:${echo.port}`));
      await new Promise((r) => socket.once('data', r));
      socket.on('data', (d) => (tunnel.received += d.length));
    }),
  );
  const pump = setInterval(() => {
    for (const tunnel of tunnels) {
      if (!tunnel.closed) {
        tunnel.socket.write('ping\n');
        tunnel.sent += 5;
      }
    }
  }, 20);

  const probe = async () => (await rawRequest(proxy.port, connectRequest(`127.0.0.1:${trap.port}`), 200)).raw;
  const allowedNow = async () => (await probe()).startsWith('HTTP/1.1 200');
  const deniedNow = async () => (await probe()).startsWith('HTTP/1.1 403');

  const writers = [inPlace, byRename];
  const latencies: number[] = [];
  for (let i = 1; i <= 50; i++) {
    const write = writers[i % 2] as (text: string) => Promise<void>;
    if (i % 5 === 0) {
      // A broken file in between: nothing changes.
      const before = proxy.running.store.current.generation;
      await write(`version: 1\nrules: [ # broken ${i}\n`);
      await waitUntil(async () => proxy.events('policy.rejected').length >= i / 5, 2000);
      t.equal(proxy.running.store.current.generation, before, `broken write ${i} is not served`);
      continue;
    }
    const deny = i % 2 === 1;
    await write(deny ? denyPolicy(i) : allowPolicy(i));
    latencies.push(await waitUntil(deny ? deniedNow : allowedNow, 1000));
  }

  // The same through a ConfigMap-style symlink swap.
  await writeFile(proxy.policyFile, '');
  const { rm } = await import('node:fs/promises');
  await rm(proxy.policyFile);
  await kubeWrite(denyPolicy(100));
  await symlink('..data/policy.yaml', proxy.policyFile);
  latencies.push(await waitUntil(deniedNow, 1500));
  await kubeWrite(allowPolicy(101));
  latencies.push(await waitUntil(allowedNow, 1000));
  await kubeWrite('version: 1\nrules: [\n');
  await waitUntil(
    async () =>
      proxy.events('policy.rejected').some((e) => e.trigger !== 'start' && String((e.errors as string[])[0]).includes('policy.yaml:3:1')),
    2000,
  );
  t.ok(await allowedNow(), 'a broken ConfigMap update leaves the last good policy serving');

  clearInterval(pump);
  await new Promise((r) => setTimeout(r, 200));
  t.ok(
    latencies.every((ms) => ms <= 1000),
    `every good write took effect within 1 s (max ${Math.max(...latencies)} ms over ${latencies.length})`,
  );
  t.equal(tunnels.filter((x) => x.closed).length, 0, 'no open tunnel was dropped');
  t.ok(
    tunnels.every((x) => x.received > 0 && x.received >= x.sent - 50),
    'every tunnel kept streaming',
  );
  const generations = new Set(proxy.events('egress.decision').map((e) => e.policy_generation));
  t.ok(generations.size > 20, `decisions were made by ${generations.size} generations`);
  const loaded = new Set(proxy.events('policy.loaded').map((e) => e.generation));
  for (const g of generations) t.ok(loaded.has(g), `generation ${String(g)} was a complete, loaded policy`);
  t.equal(
    proxy.events('policy.rejected').filter((e) => e.trigger !== 'start').length >= 11,
    true,
    'every broken write was rejected and logged',
  );
  for (const tunnel of tunnels) tunnel.socket.destroy();
});

t.test('the roll-out: observe, draft, shadow, enforce', async (t) => {
  const trap = await startTrap('127.0.0.1', 0);
  const other = await startTrap('127.0.0.1', 0);
  const proxy = await startTestProxy({
    policy: 'version: 1\ndefault_verdict: allow\nobserve_mode: true\n',
    config: 'admin: {listen: 127.0.0.1:0}',
  });
  t.teardown(async () => {
    await proxy.stop();
    await trap.close();
    await other.close();
  });
  const admin = (proxy.running.admin?.server.address() as AddressInfo).port;
  const call = async (port: number, tool: string) =>
    (await rawRequest(proxy.port, connectRequest(`127.0.0.1:${port}`, `x-mcp-tool: ${tool}\r\n`), 200)).raw.slice(0, 12);

  t.equal(await call(trap.port, 'fetch'), 'HTTP/1.1 200', 'observe: dispatched and recorded');
  const draft = await (await fetch(`http://127.0.0.1:${admin}/v1/discovered?format=yaml`)).text();
  t.match(draft, /shadow_mode: true/);
  const serving = (text: string) => async () => proxy.running.store.current.sha256 === createHash('sha256').update(text).digest('hex');
  await writeFile(proxy.policyFile, draft);
  t.ok((await waitUntil(serving(draft), 2000)) < 2000, 'the draft loads (it passes check)');

  t.equal(await call(trap.port, 'fetch'), 'HTTP/1.1 200', 'shadow: the discovered destination is allowed');
  t.equal(await call(other.port, 'fetch'), 'HTTP/1.1 200', 'shadow: an unlisted one is dispatched...');
  const shadowed = proxy.events('egress.decision').at(-1);
  t.match(shadowed, { shadow: true, dispatched: true, rule: { id: 'deny-everything-else' } });
  t.match(shadowed?.msg, /^\[shadow\] would deny 127\.0\.0\.1:\d+/, '... and logged as a would-deny');

  const enforcing = draft.replace(/^shadow_mode: true$/m, 'shadow_mode: false');
  await writeFile(proxy.policyFile, enforcing);
  t.ok((await waitUntil(serving(enforcing), 2000)) < 2000, 'the enforcing policy loads');
  t.equal(await call(trap.port, 'fetch'), 'HTTP/1.1 200', 'enforce: the allow-list holds');
  t.equal(await call(other.port, 'fetch'), 'HTTP/1.1 403', 'enforce: the rest is refused');
});
