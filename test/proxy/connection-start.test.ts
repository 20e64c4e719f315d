/**
 * Who reads a new connection (src/proxy/connection-start.ts), through the real proxy on
 * loopback: CONNECT heads read by the proxy's own reader, in any number of pieces and with the
 * tunnel's first bytes attached; every other request handed to node:http with the bytes already
 * read; the limits (size, deadline, malformed heads) holding on the CONNECT path too.
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import t from 'tap';
import { startTestProxyFor } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { connectRequest, parseResponse, rawRequest } from '../helpers/raw.js';
import { startUpstream } from '../helpers/upstream.js';
import type { TestUpstream } from '../helpers/upstream.js';

const POLICY = 'version: 1\ndefault_verdict: allow\nrules: []\n';

async function setup(t: { teardown(fn: () => unknown): void }, config?: string): Promise<{ proxy: TestProxy; upstream: TestUpstream }> {
  const upstream = await startUpstream();
  t.teardown(() => upstream.close());
  const proxy = await startTestProxyFor(t, { policy: POLICY, config });
  return { proxy, upstream };
}

/** Writes `pieces` one at a time with a pause between, then reads until the peer closes. */
async function sendInPieces(port: number, pieces: Array<string | Buffer>, pauseMs = 15): Promise<string> {
  const socket = connect({ host: '127.0.0.1', port, noDelay: true });
  let data = '';
  socket.on('data', (d) => (data += d.toString('latin1')));
  socket.on('error', () => {});
  await once(socket, 'connect');
  for (const piece of pieces) {
    if (socket.destroyed) break;
    socket.write(piece);
    await new Promise((r) => setTimeout(r, pauseMs));
  }
  if (!socket.destroyed) await once(socket, 'close');
  return data;
}

const tunnelledGet = (port: number, path: string) => `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`;

t.test('a CONNECT head in single bytes, then the tunnel', async (t) => {
  const { proxy, upstream } = await setup(t);
  const head = connectRequest(`127.0.0.1:${upstream.port}`, 'x-mcp-tool: fetch\r\n');
  const answer = await sendInPieces(proxy.port, [...head.split(''), tunnelledGet(upstream.port, '/bytes')], 2);
  t.match(answer, /^HTTP\/1\.1 200 Connection Established\r\n\r\nHTTP\/1\.1 200 OK/);
  t.match(answer, /"url":"\/bytes"/);
  const decision = await proxy.waitFor((e) => e.event === 'egress.decision');
  t.equal(decision.tool, 'fetch', 'the attribution header was read from the pieced-together head');
  t.equal(decision.method, 'CONNECT');
});

t.test('bytes sent with the head go to the upstream first, byte for byte', async (t) => {
  const { proxy, upstream } = await setup(t);
  const answer = await sendInPieces(proxy.port, [connectRequest(`127.0.0.1:${upstream.port}`) + tunnelledGet(upstream.port, '/pipelined')]);
  t.match(answer, /"url":"\/pipelined"/);
  const closed = await proxy.waitFor((e) => e.event === 'egress.closed');
  t.equal(closed.bytes_up, Buffer.byteLength(tunnelledGet(upstream.port, '/pipelined')), 'bytes_up counts the bytes after the head');
});

t.test('limits and malformed heads on the CONNECT path', async (t) => {
  const { proxy, upstream } = await setup(t, 'limits: {header_timeout_ms: 500, max_header_bytes: 4096}');
  const rows: Array<[string, string, number, string]> = [
    ['over max_header_bytes', connectRequest('a.test:443', `x-pad: ${'a'.repeat(8000)}\r\n`), 431, 'request_header_too_large'],
    ['over the limit before any blank line', `CONNECT a.test:443 HTTP/1.1\r\nx-pad: ${'a'.repeat(8000)}`, 431, 'request_header_too_large'],
    ['obs-fold', 'CONNECT a.test:443 HTTP/1.1\r\nx-a: b\r\n  c\r\n\r\n', 400, 'bad_request'],
    ['bare LF', 'CONNECT a.test:443 HTTP/1.1\nHost: a.test\n\n', 400, 'bad_request'],
    ['HTTP/2.0', 'CONNECT a.test:443 HTTP/2.0\r\n\r\n', 400, 'bad_request'],
    ['a body', 'CONNECT a.test:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400, 'bad_request'],
    ['userinfo in the target', 'CONNECT user@a.test:443 HTTP/1.1\r\n\r\n', 400, 'bad_request'],
  ];
  for (const [name, request, status, code] of rows) {
    const r = await rawRequest(proxy.port, request);
    t.equal(r.status, status, name);
    t.equal(JSON.parse(r.body || '{}').error?.code, code, `${name}: ${code}`);
    t.ok(r.closedByPeer, `${name}: closed`);
  }
  t.notOk(
    proxy.events('egress.decision').some((e) => e.host === 'a.test'),
    'no malformed head reached a decision',
  );

  const trickled = await sendInPieces(
    proxy.port,
    ['CONNECT a.test:443 HTTP/1.1\r\n', ...Array.from({ length: 20 }, () => 'x-a: b\r\n')],
    100,
  );
  t.match(trickled, /^HTTP\/1\.1 408/, 'the header deadline counts from the connection, not the last byte');
  const silentPrefix = await sendInPieces(proxy.port, ['CONN'], 0);
  t.match(silentPrefix, /^HTTP\/1\.1 408/, 'a client stuck inside "CONNECT " gets 408 too');

  const ok = await rawRequest(proxy.port, connectRequest(`127.0.0.1:${upstream.port}`) + tunnelledGet(upstream.port, '/after'));
  t.match(ok.raw, /"url":"\/after"/, 'and the proxy still serves');
});

t.test('a client that leaves mid-head is dropped without an answer or a call', async (t) => {
  const { proxy, upstream } = await setup(t);
  const socket = connect({ host: '127.0.0.1', port: proxy.port });
  await once(socket, 'connect');
  socket.end('CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n');
  let answer = '';
  socket.on('data', (d) => (answer += d.toString()));
  await once(socket, 'close');
  t.equal(answer, '');
  const ok = await rawRequest(proxy.port, connectRequest(`127.0.0.1:${upstream.port}`) + tunnelledGet(upstream.port, '/still'));
  t.match(ok.raw, /"url":"\/still"/);
  t.equal(proxy.events('egress.decision').length, 1, 'only the complete CONNECT was decided');
});

t.test("everything else is node:http's, with the bytes already read put back", async (t) => {
  const { proxy, upstream } = await setup(t);
  const get = `GET http://127.0.0.1:${upstream.port}/split HTTP/1.1\r\nHost: 127.0.0.1:${upstream.port}\r\nConnection: close\r\n\r\n`;
  const split = parseResponse(await sendInPieces(proxy.port, ['G', 'ET', get.slice(3)]));
  t.equal(split.status, 200, 'a request split inside its method');
  t.match(split.body, /"url":"\/split"/);

  const copy = parseResponse(
    await sendInPieces(proxy.port, [
      'CO',
      `PY http://127.0.0.1:${upstream.port}/copy HTTP/1.1\r\nHost: 127.0.0.1:${upstream.port}\r\nConnection: close\r\n\r\n`,
    ]),
  );
  t.equal(copy.status, 200, 'a method that starts like CONNECT and is not: node:http reads it whole');
  t.equal(upstream.requests.at(-1)?.method, 'COPY');

  const post = `POST http://127.0.0.1:${upstream.port}/body HTTP/1.1\r\nHost: 127.0.0.1:${upstream.port}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello`;
  const posted = parseResponse(await sendInPieces(proxy.port, [post]));
  t.equal(posted.status, 200, 'a request and its body in the first bytes');
  t.equal(upstream.requests.at(-1)?.body, 'hello');
});

t.test("a CONNECT after a request on a kept-alive connection is node:http's, and works the same", async (t) => {
  const { proxy, upstream } = await setup(t);
  const socket: Socket = connect({ host: '127.0.0.1', port: proxy.port });
  let data = '';
  socket.on('data', (d) => (data += d.toString('latin1')));
  await once(socket, 'connect');
  socket.write(`GET http://127.0.0.1:${upstream.port}/first HTTP/1.1\r\nHost: 127.0.0.1:${upstream.port}\r\n\r\n`);
  while (!/"url":"\/first"/.test(data)) await once(socket, 'data');
  data = '';
  socket.write(connectRequest(`127.0.0.1:${upstream.port}`, 'x-mcp-tool: later\r\n') + tunnelledGet(upstream.port, '/second'));
  await once(socket, 'close');
  t.match(data, /^HTTP\/1\.1 200 Connection Established\r\n\r\nHTTP\/1\.1 200 OK/);
  t.match(data, /"url":"\/second"/);
  const decisions = proxy.events('egress.decision');
  t.same(
    decisions.map((e) => [e.method, e.tool]),
    [
      ['GET', null],
      ['CONNECT', 'later'],
    ],
  );
});

t.test('stopping the proxy closes connections whose CONNECT head is still arriving', async (t) => {
  const { proxy } = await setup(t);
  const socket = connect({ host: '127.0.0.1', port: proxy.port });
  socket.on('error', () => {});
  await once(socket, 'connect');
  socket.write('CONNECT a.test:443 HTTP/1.1\r\n');
  let answer = '';
  socket.on('data', (d: Buffer) => (answer += d.toString('latin1')));
  await new Promise((r) => setTimeout(r, 50));
  const started = performance.now();
  const closed = once(socket, 'close').then(() => performance.now() - started);
  await proxy.running.stop();
  // Closed by stop() itself, not by the 10 s header deadline: well within a second.
  const closedAfter = await Promise.race([closed, new Promise<number>((r) => setTimeout(r, 1000, Infinity))]);
  t.ok(closedAfter < 1000, `the half-read connection was closed ${Math.round(closedAfter)} ms into stop()`);
  t.equal(answer, '', 'cut without an answer (there is no request to answer)');
});

t.test('clients that reset right after a refused head do not take the proxy down', async (t) => {
  const { proxy, upstream } = await setup(t, 'limits: {max_header_bytes: 4096}');
  const heads = ['CONNECT a.test:443 HTTP/2.0\r\n\r\n', `CONNECT a.test:443 HTTP/1.1\r\nx: ${'a'.repeat(8000)}\r\n\r\n`];
  for (let i = 0; i < 40; i++) {
    const socket = connect({ host: '127.0.0.1', port: proxy.port });
    socket.on('error', () => {});
    await once(socket, 'connect');
    socket.write(heads[i % 2] as string);
    // Wait for the refusal to start arriving, then reset while the rest of it is written.
    await Promise.race([once(socket, 'data'), new Promise((r) => setTimeout(r, 200))]);
    socket.resetAndDestroy();
  }
  const ok = await rawRequest(proxy.port, connectRequest(`127.0.0.1:${upstream.port}`) + tunnelledGet(upstream.port, '/alive'));
  t.match(ok.raw, /"url":"\/alive"/, 'still serving');
});
