/**
 * The preload's stdin hook: a tools/call whose line arrives in pieces (split inside a UTF-8
 * character, several messages in one chunk) is still recognised and attributed, and the server
 * receives exactly the bytes that were sent.
 */
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import t from 'tap';
import { startTestProxy } from '../helpers/proxy.js';
import { startUpstream } from '../helpers/upstream.js';

const REGISTER = new URL('../../dist/src/register/index.js', import.meta.url).pathname;
const SERVER = new URL('../fixtures/mcp-fetch-server.mjs', import.meta.url).pathname;

t.test('a tools/call split across chunks, inside a multi-byte character, is attributed', async (t) => {
  const upstream = await startUpstream();
  const proxy = await startTestProxy({ policy: 'version: 1\ndefault_verdict: allow\n' });
  const server = spawn(process.execPath, ['--import', REGISTER, SERVER], {
    env: { ...process.env, HTTP_PROXY: proxy.url, HTTPS_PROXY: proxy.url, NO_PROXY: '' },
    stdio: ['pipe', 'pipe', 'ignore'],
  });
  t.teardown(async () => {
    server.kill();
    await proxy.stop();
    await upstream.close();
  });
  const responses: Array<{ id?: number; result?: { content: Array<{ text: string }> } }> = [];
  let buffered = '';
  server.stdout.setEncoding('utf8');
  server.stdout.on('data', (c: string) => {
    buffered += c;
    let nl: number;
    while ((nl = buffered.indexOf('\n')) !== -1) {
      responses.push(JSON.parse(buffered.slice(0, nl)));
      buffered = buffered.slice(nl + 1);
    }
  });
  const until = async (id: number) => {
    for (let i = 0; i < 400 && !responses.some((r) => r.id === id); i++) await new Promise((r) => setTimeout(r, 10));
    return responses.find((r) => r.id === id);
  };
  const line = (m: unknown) => Buffer.from(`${JSON.stringify(m)}\n`, 'utf8');
  const init = {
    jsonrpc: '2.0',
    id: 1,
    method: 'initialize',
    params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 't', version: '1' } },
  };
  // initialize and initialized in one chunk
  server.stdin.write(Buffer.concat([line(init), line({ jsonrpc: '2.0', method: 'notifications/initialized' })]));
  t.ok(await until(1), 'initialized');

  const call = line({
    jsonrpc: '2.0',
    id: 2,
    method: 'tools/call',
    params: { name: 'fetch_url', arguments: { url: `http://127.0.0.1:${upstream.port}/caf\u00e9`, delay_ms: 1 } },
  });
  const cut = call.indexOf(Buffer.from('\u00e9', 'utf8')) + 1; // inside the two bytes of é
  server.stdin.write(call.subarray(0, cut));
  await new Promise((r) => setTimeout(r, 50));
  server.stdin.write(call.subarray(cut));
  const response = await until(2);
  t.match(JSON.parse(response?.result?.content[0]?.text ?? '{}'), { url: '/caf%C3%A9' }, 'the server got the URL intact');
  const [decision] = await proxy.waitForCount('egress.decision', 1);
  t.equal(decision?.tool, 'fetch_url', 'the split call is attributed');
  t.match(decision?.call_id, /^[0-9a-f]{32}$/);
});

t.test('a tools/call the proxy does not record is not run: its answer is an error (fail closed)', async (t) => {
  // A proxy that takes no announcements (an older one, or something else on that port).
  const seen: string[] = [];
  const stub = createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    res.writeHead(400, { 'content-type': 'application/json', 'x-egress-error': 'bad_request' }).end('{}');
  });
  await new Promise<void>((r) => stub.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(stub.address() as { port: number }).port}`;
  const server = spawn(process.execPath, ['--import', REGISTER, SERVER], {
    env: { ...process.env, HTTP_PROXY: url, HTTPS_PROXY: url, NO_PROXY: '' },
    stdio: ['pipe', 'pipe', 'ignore'],
  });
  t.teardown(() => {
    server.kill();
    stub.close();
  });
  let out = '';
  server.stdout.setEncoding('utf8');
  server.stdout.on('data', (c: string) => (out += c));
  const line = (m: unknown) => `${JSON.stringify(m)}\n`;
  server.stdin.write(
    line({
      jsonrpc: '2.0',
      id: 1,
      method: 'initialize',
      params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 't', version: '1' } },
    }),
  );
  server.stdin.write(line({ jsonrpc: '2.0', method: 'notifications/initialized' }));
  // The call and a ping in one chunk: the ping waits behind the held call, in order.
  server.stdin.write(
    line({
      jsonrpc: '2.0',
      id: 2,
      method: 'tools/call',
      params: { name: 'fetch_url', arguments: { url: 'http://127.0.0.1:9/x', delay_ms: 1 } },
    }) + line({ jsonrpc: '2.0', id: 3, method: 'ping' }),
  );
  for (let i = 0; i < 400 && !out.includes('"id":3'); i++) await new Promise((r) => setTimeout(r, 10));
  const responses = out
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { id: number; error?: { code: number; message: string }; result?: unknown });
  const call = responses.find((r) => r.id === 2);
  t.match(call?.error, {
    code: -32001,
    message: /the call was not run: it could not be recorded .* refused the announcement \(400 bad_request\)/,
  });
  t.ok(
    responses.some((r) => r.id === 3 && r.result !== undefined),
    'input after the held call is delivered',
  );
  t.same(seen, ['POST /mcp-egress/v1/calls'], 'the tool never ran: no request but the announcement');
});

t.test('a tools/call in any JSON spelling ("tools\\/call", "tools\\u002fcall") is attributed', async (t) => {
  const upstream = await startUpstream();
  const proxy = await startTestProxy({ policy: 'version: 1\ndefault_verdict: allow\n' });
  const server = spawn(process.execPath, ['--import', REGISTER, SERVER], {
    env: { ...process.env, HTTP_PROXY: proxy.url, HTTPS_PROXY: proxy.url, NO_PROXY: '' },
    stdio: ['pipe', 'pipe', 'ignore'],
  });
  t.teardown(async () => {
    server.kill();
    await proxy.stop();
    await upstream.close();
  });
  let output = '';
  server.stdout.setEncoding('utf8');
  server.stdout.on('data', (c: string) => (output += c));
  const init = {
    jsonrpc: '2.0',
    id: 1,
    method: 'initialize',
    params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 't', version: '1' } },
  };
  server.stdin.write(`${JSON.stringify(init)}\n${JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' })}\n`);
  const url = `http://127.0.0.1:${upstream.port}/x`;
  const call = (id: number) =>
    JSON.stringify({ jsonrpc: '2.0', id, method: 'tools/call', params: { name: 'fetch_url', arguments: { url } } });
  // PHP's json_encode escapes slashes; any character may be written as \uXXXX.
  server.stdin.write(`${call(2).replace('"tools/call"', '"tools\\/call"')}\n`);
  server.stdin.write(`${call(3).replace('"tools/call"', '"tools\\u002fcall"')}\n`);
  const decisions = await proxy.waitForCount('egress.decision', 2);
  t.same(
    decisions.map((d) => d.tool),
    ['fetch_url', 'fetch_url'],
    'both calls attributed',
  );
  t.ok(output.length > 0);
});
