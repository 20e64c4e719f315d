/**
 * The preload's stdin hook: a tools/call whose line arrives in pieces (split inside a UTF-8
 * character, several messages in one chunk) is still recognised and attributed, and the server
 * receives exactly the bytes that were sent.
 */
import { spawn } from 'node:child_process';
import t from 'tap';
import { startTestProxy } from '../helpers/proxy.js';
import { startUpstream } from '../helpers/upstream.js';

const REGISTER = new URL('../../dist/src/register/index.js', import.meta.url).pathname;
const SERVER = new URL('../fixtures/mcp-fetch-server.mjs', import.meta.url).pathname;

t.test('a tools/call split across chunks, inside a multi-byte character, is attributed', async (t) => {
  const upstream = await startUpstream();
  const proxy = await startTestProxy({ policy: 'version: 1\ndefault_verdict: allow\n' });
  const server = spawn(process.execPath, ['--import', REGISTER, SERVER], { env: { ...process.env, HTTP_PROXY: proxy.url, HTTPS_PROXY: proxy.url, NO_PROXY: '' }, stdio: ['pipe', 'pipe', 'ignore'] });
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
  const init = { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 't', version: '1' } } };
  // initialize and initialized in one chunk
  server.stdin.write(Buffer.concat([line(init), line({ jsonrpc: '2.0', method: 'notifications/initialized' })]));
  t.ok(await until(1), 'initialized');

  const call = line({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'fetch_url', arguments: { url: `http://127.0.0.1:${upstream.port}/caf\u00e9`, delay_ms: 1 } } });
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
