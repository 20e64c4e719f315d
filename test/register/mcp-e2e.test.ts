/**
 * End to end with real parts: an MCP server written with the SDK (two fetch-shaped tools) runs
 * as a stdio child under the preload, an SDK client fires both tools concurrently at allowed
 * and refused loopback destinations, and the proxy attributes every connection to the right
 * tool and call; refusals come back as tool errors carrying the reason; nothing reaches a
 * refused destination. Then the same with `attribution.trust: registered` through the gateway
 * helper, plus a forged and an expired call id.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { build } from 'esbuild';
import t from 'tap';
import type { Test } from 'tap';
import { createGateway } from '../../src/gateway/index.js';
import { CALL_ID_META_KEY } from '../../src/register/context.js';
import { startTestProxy } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { startUpstream } from '../helpers/upstream.js';
import type { TestUpstream } from '../helpers/upstream.js';

const REGISTER = new URL('../../dist/src/register/index.js', import.meta.url).pathname;
const SERVER = new URL('../fixtures/mcp-fetch-server.mjs', import.meta.url).pathname;
const EXPLICIT = new URL('../fixtures/explicit-api.mjs', import.meta.url).pathname;
const run = promisify(execFile);

type ToolResult = { isError?: boolean; content: Array<{ type: string; text: string }> };

async function connectServer(proxy: TestProxy, server = SERVER, credentials = ''): Promise<Client> {
  const url = proxy.url.replace('http://', `http://${credentials}`);
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: ['--import', REGISTER, server],
    env: { HTTPS_PROXY: url, HTTP_PROXY: url, NO_PROXY: '' },
    stderr: 'pipe',
  });
  const client = new Client({ name: 'e2e', version: '1.0.0' });
  await client.connect(transport);
  return client;
}

function policyFor(a: TestUpstream, b: TestUpstream): string {
  return `version: 1
default_verdict: deny
rules:
  - {id: url-tool, priority: 10, verdict: allow, tool_name_glob: fetch_url, ports: [${a.port}], egress: {allow: [127.0.0.1]}}
  - {id: json-tool, priority: 20, verdict: allow, tool_name_glob: fetch_json, ports: [${b.port}], egress: {allow: [127.0.0.1]}}
`;
}

async function concurrentCalls(t: Test, server: string): Promise<void> {
  const a = await startUpstream();
  const b = await startUpstream();
  const proxy = await startTestProxy({ policy: policyFor(a, b) });
  const client = await connectServer(proxy, server);
  t.teardown(async () => {
    await client.close();
    await proxy.stop();
    await Promise.all([a.close(), b.close()]);
  });
  const plan: Array<{ tool: string; upstream: TestUpstream; allowed: boolean }> = [];
  for (let round = 0; round < 3; round++) {
    plan.push(
      { tool: 'fetch_url', upstream: a, allowed: true },
      { tool: 'fetch_url', upstream: b, allowed: false },
      { tool: 'fetch_json', upstream: b, allowed: true },
      { tool: 'fetch_json', upstream: a, allowed: false },
    );
  }
  const results = (await Promise.all(
    plan.map((p, i) =>
      client.callTool({
        name: p.tool,
        arguments: { url: `http://127.0.0.1:${p.upstream.port}/${p.tool}/${i}`, delay_ms: 20 + (i % 4) * 5 },
      }),
    ),
  )) as ToolResult[];
  results.forEach((r, i) => {
    const p = plan[i]!;
    if (p.allowed) {
      t.notOk(r.isError, `${p.tool} → ${p.upstream.port} allowed`);
      t.match(JSON.parse(r.content[0]!.text), { url: `/${p.tool}/${i}` });
    } else {
      t.equal(r.isError, true, `${p.tool} → ${p.upstream.port} refused`);
      t.match(
        r.content[0]!.text,
        new RegExp(`^fetch failed: firewall_blocked: default rule=none destination=127\\.0\\.0\\.1:${p.upstream.port} `),
        'the tool error carries the refusal',
      );
    }
  });
  t.same(a.requests.map((r) => r.url.split('/')[1]).sort(), ['fetch_url', 'fetch_url', 'fetch_url'], 'only fetch_url reached A');
  t.same(b.requests.map((r) => r.url.split('/')[1]).sort(), ['fetch_json', 'fetch_json', 'fetch_json'], 'only fetch_json reached B');
  for (const r of [...a.requests, ...b.requests])
    t.notOk(r.rawHeaders.map((h) => h.toLowerCase()).includes('x-mcp-tool'), 'attribution headers are not forwarded');

  const decisions = proxy.events('egress.decision');
  t.equal(decisions.length, plan.length, 'one decision per call');
  for (const d of decisions) {
    const expectedTool = d.port === a.port ? (d.dispatched ? 'fetch_url' : 'fetch_json') : d.dispatched ? 'fetch_json' : 'fetch_url';
    t.equal(d.tool, expectedTool, `port ${String(d.port)} dispatched=${String(d.dispatched)} attributed to ${expectedTool}`);
    t.match(d.call_id, /^[0-9a-f]{32}$/, '128-bit call id');
  }
  t.equal(new Set(decisions.map((d) => d.call_id)).size, plan.length, 'every call has its own id');
  t.equal(new Set(decisions.map((d) => d.session_id)).size, 1, 'one session id for the server process');
}

t.test('concurrent tool calls are attributed exactly (trust: header)', (t) => concurrentCalls(t, SERVER));

t.test('the same for a bundled server that never imports the SDK at run time', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'mep-bundle-'));
  const bundled = join(dir, 'server.mjs');
  await build({ entryPoints: [SERVER], bundle: true, platform: 'node', format: 'esm', outfile: bundled, logLevel: 'silent' });
  t.notMatch(await readFile(bundled, 'utf8'), /^import[^\n]*from ['"]@modelcontextprotocol\/sdk/m, 'the SDK is inlined');
  await concurrentCalls(t, bundled);
});

t.test('runAsToolCall attributes code the stdio path does not reach', async (t) => {
  const a = await startUpstream();
  const proxy = await startTestProxy({ policy: 'version: 1\ndefault_verdict: allow\n' });
  t.teardown(async () => {
    await proxy.stop();
    await a.close();
  });
  const { stdout } = await run(process.execPath, ['--import', REGISTER, EXPLICIT, `http://127.0.0.1:${a.port}/x`], {
    env: { ...process.env, HTTP_PROXY: proxy.url, HTTPS_PROXY: proxy.url, NO_PROXY: '' },
  });
  t.same(JSON.parse(stdout), [200, 200, 200]);
  const decisions = proxy.events('egress.decision');
  t.same(
    decisions.map((d) => [d.tool, d.call_id]),
    [
      ['webhook', 'explicit-1'],
      ['webhook', 'explicit-1'],
      [null, null],
    ],
  );
});

t.test('trust: registered through the gateway; forged and expired ids refused', async (t) => {
  const a = await startUpstream();
  const b = await startUpstream();
  // trust: registered needs a developer token for the gateway and a proxy user per server.
  const sha = (s: string) => createHash('sha256').update(s).digest('hex');
  const token = 'gateway-token-0123456789abcdef';
  const config = `attribution: {trust: registered}
admin: {listen: 127.0.0.1:0, tokens: [{name: gateway, sha256: ${sha(token)}, role: developer}]}
auth: {users: [{name: fetcher, password_sha256: ${sha('fetcher-secret')}}]}`;
  const proxy = await startTestProxy({ policy: policyFor(a, b), config });
  const client = await connectServer(proxy, SERVER, 'fetcher:fetcher-secret@');
  t.teardown(async () => {
    await client.close();
    await proxy.stop();
    await Promise.all([a.close(), b.close()]);
  });
  const adminPort = (proxy.running.admin?.server.address() as { port: number }).port;
  const gateway = createGateway({ adminUrl: `http://127.0.0.1:${adminPort}`, token, client: 'fetcher' });

  const results = (await Promise.all([
    gateway.callTool(client, { name: 'fetch_url', arguments: { url: `http://127.0.0.1:${a.port}/g1` } }),
    gateway.callTool(client, { name: 'fetch_json', arguments: { url: `http://127.0.0.1:${b.port}/g2` } }),
    gateway.callTool(client, { name: 'fetch_json', arguments: { url: `http://127.0.0.1:${a.port}/g3` } }),
  ])) as ToolResult[];
  t.notOk(results[0]!.isError);
  t.notOk(results[1]!.isError);
  t.equal(results[2]!.isError, true);
  const decisions = proxy.events('egress.decision');
  t.same(decisions.map((d) => d.tool).sort(), ['fetch_json', 'fetch_json', 'fetch_url']);
  t.ok(decisions.every((d) => /^[0-9a-f]{32}$/.test(String(d.call_id))));
  t.equal(proxy.running.registry.size(), 0, 'every registration ended when its call returned');

  const forged = (await client.callTool({
    name: 'fetch_url',
    arguments: { url: `http://127.0.0.1:${a.port}/forged` },
    _meta: { [CALL_ID_META_KEY]: 'f'.repeat(32) },
  })) as ToolResult;
  t.equal(forged.isError, true);
  t.match(forged.content[0]!.text, /firewall_blocked: unattributed rule=none/, 'a forged call id is refused as unattributed');

  const expiredId = await gateway.register('fetch_url', { ttlMs: 1 });
  await new Promise((r) => setTimeout(r, 20));
  const expired = (await client.callTool({
    name: 'fetch_url',
    arguments: { url: `http://127.0.0.1:${a.port}/expired` },
    _meta: { [CALL_ID_META_KEY]: expiredId },
  })) as ToolResult;
  t.equal(expired.isError, true);
  t.match(expired.content[0]!.text, /firewall_blocked: unattributed rule=none/, 'an expired call id is refused as unattributed');
  t.same(
    a.requests.map((r) => r.url),
    ['/g1'],
    'nothing reached a destination through a refused call',
  );
});
