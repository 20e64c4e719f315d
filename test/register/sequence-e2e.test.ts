/**
 * The lethal-trifecta breaker end to end with real parts: a stdio MCP server with `read_file`
 * (no network) and `fetch` tools runs under `mcp-egress-proxy wrap` (the preload), driven by the
 * SDK client. A `fetch` to an allowed loopback destination works; right after a `read_file` the
 * same `fetch` is refused by the sequence rule (the tool's result names the rule and the reason;
 * the destination sees nothing); once the window has passed it works again. The preload's
 * announcement is what makes the network-free `read_file` history. Then the same across two
 * servers of one agent through the gateway helper under `trust: registered`, where the
 * gateway's registrations are the history and announcements are refused.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { createGateway } from '../../src/gateway/index.js';
import { startTestProxyFor } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { startUpstream } from '../helpers/upstream.js';

const CLI = new URL('../../dist/src/cli.js', import.meta.url).pathname;
const SERVER = new URL('../fixtures/mcp-sequence-server.mjs', import.meta.url).pathname;
const WINDOW_SECONDS = 1;
const sha = (s: string) => createHash('sha256').update(s).digest('hex');

type ToolResult = { isError?: boolean; content: Array<{ type: string; text: string }> };

/** The fixture under `mcp-egress-proxy wrap`, as an MCP client's config would start it. */
async function wrapped(
  t: { teardown(fn: () => unknown): void },
  proxy: TestProxy,
  user?: { name: string; password: string },
): Promise<{ client: Client; stderr: () => string }> {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [CLI, 'wrap', '--proxy', proxy.url, ...(user ? ['--user', user.name] : []), '--', process.execPath, SERVER],
    env: { PATH: process.env.PATH ?? '', ...(user ? { MCP_EGRESS_PASSWORD: user.password } : {}) },
    stderr: 'pipe',
  });
  let stderr = '';
  transport.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const client = new Client({ name: 'sequence-e2e', version: '1.0.0' });
  await client.connect(transport);
  t.teardown(() => client.close());
  return { client, stderr: () => stderr };
}

const policy = (port: number) => `version: 1
default_verdict: deny
rules:
  - id: no-egress-after-read
    priority: 1
    label: No egress right after a file read
    verdict: deny
    after: {tool_name_glob: "read_*", within_seconds: ${WINDOW_SECONDS}}
  - {id: fetch-local, priority: 10, verdict: allow, tool_name_glob: fetch, ports: [${port}], egress: {allow: [127.0.0.1]}}
`;

/** Waits until `ms` after `since` (the window's end), no longer. */
const until = (since: number, ms: number) => new Promise((r) => setTimeout(r, Math.max(0, since + ms - Date.now())));

t.test('one server under the preload: read_file then fetch is refused, and allowed again after the window', async (t) => {
  const upstream = await startUpstream();
  t.teardown(() => upstream.close());
  const proxy = await startTestProxyFor(t, { policy: policy(upstream.port) });
  const secret = join(t.testdir(), 'secret.txt');
  await writeFile(secret, 'the secret');
  const { client } = await wrapped(t, proxy);
  const fetchTool = (path: string) =>
    client.callTool({ name: 'fetch', arguments: { url: `http://127.0.0.1:${upstream.port}${path}` } }) as Promise<ToolResult>;

  const before = await fetchTool('/before');
  t.notOk(before.isError, 'a fetch with no read before it works');
  const readAt = Date.now();
  const read = (await client.callTool({ name: 'read_file', arguments: { path: secret } })) as ToolResult;
  t.equal(read.content[0]?.text, 'the secret');

  const after = await fetchTool('/exfiltrate?the+secret');
  t.equal(after.isError, true, 'the fetch right after the read is refused');
  t.match(
    after.content[0]?.text,
    /^fetch failed: firewall_blocked: rule rule=no-egress-after-read destination=127\.0\.0\.1:\d+ /,
    'the result names the reason and the rule',
  );
  t.match(after.content[0]?.text, /after an earlier read_file call/);
  t.same(
    upstream.requests.map((r) => r.url),
    ['/before'],
    'the destination saw nothing of the refused fetch',
  );
  const refusal = proxy.events('egress.decision').find((d) => d.dispatched === false);
  t.match(
    refusal,
    { tool: 'fetch', rule: { id: 'no-egress-after-read' }, after: { tool: 'read_file', host: null } },
    'the event names the earlier call (announced: no network)',
  );

  await until(readAt, WINDOW_SECONDS * 1000 + 150);
  const later = await fetchTool('/later');
  t.notOk(later.isError, 'after the window the fetch works again');
  t.same(
    upstream.requests.map((r) => r.url),
    ['/before', '/later'],
  );
});

t.test('two servers of one agent through the gateway under trust: registered', async (t) => {
  const upstream = await startUpstream();
  t.teardown(() => upstream.close());
  const token = 'gateway-token-0123456789abcdef';
  const proxy = await startTestProxyFor(t, {
    policy: policy(upstream.port),
    config: `attribution: {trust: registered}
admin: {listen: 127.0.0.1:0, tokens: [{name: gateway, sha256: ${sha(token)}, role: developer}]}
auth: {users: [{name: reader, password_sha256: ${sha('reader-secret')}}, {name: fetcher, password_sha256: ${sha('fetcher-secret')}}]}`,
  });
  const secret = join(t.testdir(), 'secret.txt');
  await writeFile(secret, 'the secret');
  const reader = await wrapped(t, proxy, { name: 'reader', password: 'reader-secret' });
  const fetcher = await wrapped(t, proxy, { name: 'fetcher', password: 'fetcher-secret' });
  const adminUrl = `http://127.0.0.1:${(proxy.running.admin?.server.address() as { port: number }).port}`;
  // One agent session across both servers; another agent beside it.
  const agentReader = createGateway({ adminUrl, token, client: 'reader', sessionId: 'agent-1' });
  const agentFetcher = createGateway({ adminUrl, token, client: 'fetcher', sessionId: 'agent-1' });
  const otherAgent = createGateway({ adminUrl, token, client: 'fetcher' });
  const fetchVia = (gateway: typeof agentFetcher, path: string) =>
    gateway.callTool(fetcher.client, {
      name: 'fetch',
      arguments: { url: `http://127.0.0.1:${upstream.port}${path}` },
    }) as Promise<ToolResult>;

  t.notOk((await fetchVia(agentFetcher, '/before')).isError, 'before any read: allowed');
  const readAt = Date.now();
  const read = (await agentReader.callTool(reader.client, { name: 'read_file', arguments: { path: secret } })) as ToolResult;
  t.equal(read.content[0]?.text, 'the secret', 'the read runs (the proxy refuses its announcement; the registration counts)');

  const after = await fetchVia(agentFetcher, '/exfiltrate');
  t.equal(after.isError, true, "a fetch on another server in the same agent session is refused after the reader's read");
  t.match(after.content[0]?.text, /firewall_blocked: rule rule=no-egress-after-read/);
  t.match(
    proxy.events('egress.decision').find((d) => d.dispatched === false),
    { server: 'fetcher', session_id: 'agent-1', after: { tool: 'read_file', server: 'reader', session_id: 'agent-1' } },
  );
  t.notOk((await fetchVia(otherAgent, '/other-agent')).isError, "another agent's session is not affected");
  t.match(reader.stderr(), /the proxy takes no announcements \(attribution\.trust: registered\)/);

  await until(readAt, WINDOW_SECONDS * 1000 + 150);
  t.notOk((await fetchVia(agentFetcher, '/later')).isError, 'after the window: allowed again');
  t.same(
    upstream.requests.map((r) => r.url),
    ['/before', '/other-agent', '/later'],
    'the refused fetch sent nothing',
  );
  t.equal(proxy.running.registry.size(), 0, 'every registration ended with its call');
});
