/**
 * End to end with MCP servers published on npm that nobody here wrote (pinned in
 * devDependencies), each on a different HTTP client, started through `mcp-egress-proxy wrap` and
 * driven by the SDK's client:
 * - @tokenizin/mcp-npx-fetch 1.0.0: Node's global fetch (undici);
 * - mcp-server-fetch-typescript 0.1.1: axios, which applies HTTP(S)_PROXY itself (double
 *   proxying and an unattributed tunnel of its own, unless the preload hides the variables);
 * - @mcp-get-community/server-curl 0.1.0: node-fetch 3 (node:http/https and their global agents).
 * Per server, five concurrent calls: allowed over HTTP and HTTPS, refused by a rule, by the
 * default verdict (over HTTPS, i.e. at CONNECT) and by the SSRF baseline (a metadata trap).
 * Every egress.decision must name the server's tool and the call's own id, the refusals must
 * reach the tool's result with their reason and rule, and the traps must see nothing.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import t from 'tap';
import { startTestProxy } from '../helpers/proxy.js';
import { CA_PATH, startTrap, startUpstream } from '../helpers/upstream.js';

const CLI = new URL('../../dist/src/cli.js', import.meta.url).pathname;
const ROOT = new URL('../../', import.meta.url).pathname;
const require = createRequire(import.meta.url);

/** A package's bin script, found through its package.json (works for scoped names too). */
function binOf(pkg: string): string {
  const manifest = require.resolve(`${pkg}/package.json`);
  const { bin } = require(manifest) as { bin: string | Record<string, string> };
  return join(dirname(manifest), typeof bin === 'string' ? bin : (Object.values(bin)[0] as string));
}

interface PublishedServer {
  pkg: string;
  client: string;
  tool: string;
  args: (url: string) => Record<string, unknown>;
  /** Start it as an MCP client config would: `wrap -- npx --no-install PKG`. */
  viaNpx?: boolean;
}

const SERVERS: PublishedServer[] = [
  { pkg: '@tokenizin/mcp-npx-fetch', client: 'fetch (undici)', tool: 'fetch_html', args: (url) => ({ url }) },
  { pkg: 'mcp-server-fetch-typescript', client: 'axios', tool: 'get_raw_text', args: (url) => ({ url }) },
  { pkg: '@mcp-get-community/server-curl', client: 'node-fetch', tool: 'curl', args: (url) => ({ url, method: 'GET' }) },
  {
    pkg: '@mcp-get-community/server-curl',
    client: 'node-fetch, started through npx',
    tool: 'curl',
    args: (url) => ({ url, method: 'GET' }),
    viaNpx: true,
  },
];

/** What the model reads: the tool result's text, or the JSON-RPC error's message for servers that throw. */
async function callText(client: Client, tool: string, args: Record<string, unknown>): Promise<{ error: boolean; text: string }> {
  try {
    const r = (await client.callTool({ name: tool, arguments: args })) as { isError?: boolean; content: Array<{ text: string }> };
    return { error: r.isError === true, text: r.content.map((c) => c.text).join('\n') };
  } catch (err) {
    return { error: true, text: (err as Error).message };
  }
}

const plainText = (req: { url?: string }, res: import('node:http').ServerResponse) => {
  res.setHeader('content-type', 'text/plain');
  res.end(`hello from ${req.url}`);
};

for (const server of SERVERS) {
  t.test(`${server.pkg} (${server.client}) through wrap: attributed per call, refusals named`, async (t) => {
    const allowed = await startUpstream('127.0.0.1', { respond: plainText });
    const allowedTls = await startUpstream('127.0.0.1', { tls: true, respond: plainText });
    const ruled = await startUpstream('127.0.0.1', { respond: plainText });
    const unlisted = await startUpstream('127.0.0.1', { tls: true, respond: plainText });
    const metadata = await startTrap('169.254.169.254');
    const proxy = await startTestProxy({
      policy: `version: 1
default_verdict: deny
rules:
  - {id: no-internal-api, priority: 5, verdict: deny, ports: [${ruled.port}], egress: {deny: [127.0.0.1]}}
  - {id: allow-docs, priority: 10, verdict: allow, tool_name_glob: ${server.tool}, ports: [${allowed.port}, ${allowedTls.port}], egress: {allow: [127.0.0.1]}}
`,
    });
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: [
        CLI,
        'wrap',
        '--proxy',
        proxy.url,
        '--',
        ...(server.viaNpx ? ['npx', '--no-install', server.pkg] : [process.execPath, binOf(server.pkg)]),
      ],
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root', NODE_EXTRA_CA_CERTS: CA_PATH },
      cwd: ROOT,
      stderr: 'pipe',
    });
    let stderr = '';
    transport.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
    const client = new Client({ name: 'published-e2e', version: '1.0.0' });
    await client.connect(transport);
    t.teardown(async () => {
      await client.close();
      await proxy.stop();
      await Promise.all([allowed.close(), allowedTls.close(), ruled.close(), unlisted.close(), metadata.close()]);
    });

    const calls = [
      { url: `http://127.0.0.1:${allowed.port}/${server.tool}/1`, expect: /hello from \/\w+\/1/ },
      { url: `https://127.0.0.1:${allowedTls.port}/${server.tool}/2`, expect: /hello from \/\w+\/2/ },
      {
        url: `http://127.0.0.1:${ruled.port}/${server.tool}/3`,
        expect: new RegExp(`firewall_blocked: rule rule=no-internal-api destination=127\\.0\\.0\\.1:${ruled.port}`),
      },
      {
        url: `https://127.0.0.1:${unlisted.port}/${server.tool}/4`,
        expect: new RegExp(`firewall_blocked: default rule=none destination=127\\.0\\.0\\.1:${unlisted.port}`),
      },
      {
        url: `http://169.254.169.254:${metadata.port}/latest/meta-data/`,
        expect: new RegExp(`firewall_blocked: ssrf_baseline rule=none destination=169\\.254\\.169\\.254:${metadata.port}`),
      },
    ];
    const results = await Promise.all(calls.map((c) => callText(client, server.tool, server.args(c.url))));
    results.forEach((r, i) => {
      const c = calls[i]!;
      t.match(r.text, c.expect, `${c.url}: ${i < 2 ? 'served' : 'refusal named in what the tool returns'}`);
      t.equal(r.error, i >= 2, i < 2 ? 'not an error' : 'an error');
    });
    t.equal(
      stderr.match(/mcp-egress-proxy\/register: fetch, http and https routed through/g)?.length,
      1,
      'the preload routes the server (not npm itself under npx)',
    );

    const decisions = await proxy.waitForCount('egress.decision', calls.length);
    t.equal(decisions.length, calls.length, 'one decision per call: no double proxying, no second tunnel');
    for (const d of decisions) {
      t.equal(d.tool, server.tool, `${String(d.method)} ${String(d.host)}:${String(d.port)} attributed to ${server.tool}`);
      t.match(d.call_id, /^[0-9a-f]{32}$/, 'a 128-bit call id');
    }
    t.equal(new Set(decisions.map((d) => d.call_id)).size, calls.length, 'every call has its own id');
    t.same(
      decisions
        .filter((d) => d.dispatched)
        .map((d) => d.port)
        .sort(),
      [allowed.port, allowedTls.port].sort(),
      'only the allowed destinations were dialled',
    );
    t.same([allowed.requests.length, allowedTls.requests.length, ruled.requests.length, unlisted.requests.length], [1, 1, 0, 0]);
    t.equal(ruled.connections.length + unlisted.connections.length + metadata.connections, 0, 'the refused destinations saw no connection');
    for (const r of [...allowed.requests, ...allowedTls.requests]) {
      t.notOk(
        r.rawHeaders.some((h) => /^x-mcp-/i.test(h)),
        'attribution headers are not forwarded',
      );
      t.notOk(
        r.rawHeaders.some((h) => /^proxy-/i.test(h)),
        'no proxy headers reach the destination',
      );
    }
  });
}
