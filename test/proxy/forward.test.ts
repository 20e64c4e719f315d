/**
 * Plain-HTTP forwarding through the real proxy (loopback upstreams only): request bodies in
 * every framing, Expect: 100-continue, large and slow responses, HEAD/204/304, informational
 * answers, upstreams that fail mid-answer, and per-request byte accounting.
 */
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { connect, createServer as createNetServer } from 'node:net';
import { promisify } from 'node:util';
import t from 'tap';
import { request as undiciRequest, ProxyAgent } from 'undici';
import { rawRequest } from '../helpers/raw.js';
import { startTestProxyFor } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { missing } from '../helpers/requires.js';
import { startUpstream } from '../helpers/upstream.js';

const run = promisify(execFile);
const POLICY = 'version: 1\ndefault_verdict: allow\nrules: []\n';

const proxyFor = (t: { teardown(fn: () => unknown): void }): Promise<TestProxy> => startTestProxyFor(t, { policy: POLICY });

t.test('request bodies: content-length, chunked, and Expect: 100-continue from curl', async (t) => {
  const proxy = await proxyFor(t);
  const up = await startUpstream();
  t.teardown(() => up.close());
  const base = `http://127.0.0.1:${up.port}`;

  const fixed = await rawRequest(
    proxy.port,
    `POST ${base}/fixed HTTP/1.1\r\nHost: 127.0.0.1:${up.port}\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world`,
  );
  t.equal(fixed.status, 200);
  t.equal(JSON.parse(fixed.body).body, 'hello world');

  const chunked = await rawRequest(
    proxy.port,
    `POST ${base}/chunked HTTP/1.1\r\nHost: 127.0.0.1:${up.port}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n`,
  );
  t.equal(chunked.status, 200);
  t.equal(JSON.parse(chunked.body.replace(/^[0-9a-f]+\r\n|\r\n0\r\n\r\n$/g, '')).body, 'hello world');

  // Expect: 100-continue is one hop: the proxy answers 100 itself and does not pass it on.
  const noCurl = missing('curl');
  if (noCurl) {
    await t.test('Expect: 100-continue from curl', { skip: noCurl }, () => {});
    return;
  }
  const big = 'x'.repeat(200_000);
  const file = join(t.testdir(), 'body.txt');
  writeFileSync(file, big);
  const { stdout, stderr } = await run(
    'curl',
    [
      '-sSv',
      '-x',
      proxy.url,
      '-H',
      'Content-Type: text/plain',
      '-H',
      'Expect: 100-continue',
      '--data-binary',
      `@${file}`,
      `${base}/expect`,
    ],
    { maxBuffer: 10_000_000 },
  );
  t.match(stderr, /Expect: 100-continue/, 'curl asked to continue');
  t.match(stderr, /HTTP\/1.1 100 Continue/, 'and the proxy told it to');
  const seen = JSON.parse(stdout) as { body: string; headers: string[] };
  t.equal(seen.body.length, big.length, 'the whole body arrived');
  t.notOk(seen.headers.map((h) => h.toLowerCase()).includes('expect'), 'Expect is one hop: not forwarded');
  const posts = up.requests.filter((r) => r.method === 'POST');
  t.same(
    posts.map((r) => r.url),
    ['/fixed', '/chunked', '/expect'],
  );
});

t.test('a large response streams through with backpressure, and bytes are counted per request', async (t) => {
  const proxy = await proxyFor(t);
  const size = 8 * 1024 * 1024;
  const chunk = Buffer.alloc(64 * 1024, 97);
  const server = createServer((req, res) => {
    if (req.url === '/small') return void res.end('ok');
    res.writeHead(200, { 'content-length': String(size) });
    let left = size;
    const pump = () => {
      while (left > 0) {
        left -= chunk.length;
        if (!res.write(chunk)) return void res.once('drain', pump);
      }
      res.end();
    };
    pump();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;

  // A slow reader on one keep-alive connection: two requests, the first one large.
  const socket = connect({ host: '127.0.0.1', port: proxy.port });
  t.teardown(() => socket.destroy());
  socket.write(`GET http://127.0.0.1:${port}/big HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
  socket.pause();
  await new Promise((r) => setTimeout(r, 300));
  let received = 0;
  let text = '';
  await new Promise<void>((resolve) => {
    socket.on('data', (d: Buffer) => {
      received += d.length;
      if (received > size) text += d.toString('latin1');
      if (received >= size && !text.includes('HTTP/1.1')) {
        text = '';
        socket.write(`GET http://127.0.0.1:${port}/small HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
      }
      if (text.endsWith('ok')) resolve();
    });
    socket.resume();
  });
  t.ok(received > size, 'the whole body arrived, then the second answer');
  const closed = await Promise.all(
    [1, 2].map((n) => proxy.waitFor((e) => e.event === 'egress.closed' && proxy.events('egress.closed').length >= n)),
  );
  const lines = proxy.events('egress.closed');
  t.equal(lines.length, 2);
  t.ok(
    (lines[0]?.bytes_down as number) > size && (lines[0]?.bytes_down as number) < size + 1024,
    `the first call's bytes_down is its own (${String(lines[0]?.bytes_down)})`,
  );
  t.ok((lines[1]?.bytes_down as number) < 1024, 'the second call counts only its own answer');
  t.ok((lines[0]?.bytes_up as number) > 20 && (lines[0]?.bytes_up as number) < 1024);
  t.equal(lines[0]?.end, 'upstream_closed');
  t.ok(closed.length === 2);
});

t.test('HEAD, 204 and 304 answers keep their framing on a kept-alive connection', async (t) => {
  const proxy = await proxyFor(t);
  const server = createServer((req, res) => {
    if (req.url === '/204') return void res.writeHead(204).end();
    if (req.url === '/304') return void res.writeHead(304, { etag: '"x"' }).end();
    res.writeHead(200, { 'content-length': '5', 'content-type': 'text/plain' });
    res.end(req.method === 'HEAD' ? undefined : 'hello');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const agent = new ProxyAgent({ uri: proxy.url, proxyTunnel: false });
  t.teardown(() => agent.close());
  const head = await undiciRequest(`http://127.0.0.1:${port}/`, { method: 'HEAD', dispatcher: agent });
  t.equal(head.statusCode, 200);
  t.equal(head.headers['content-length'], '5');
  t.equal(await head.body.text(), '');
  for (const [path, status] of [
    ['/204', 204],
    ['/304', 304],
    ['/', 200],
  ] as const) {
    const r = await undiciRequest(`http://127.0.0.1:${port}${path}`, { dispatcher: agent });
    t.equal(r.statusCode, status, path);
    t.equal(await r.body.text(), status === 200 ? 'hello' : '');
  }
  t.same(
    proxy.events('egress.decision').map((e) => e.method),
    ['HEAD', 'GET', 'GET', 'GET'],
    'each request on the kept-alive connection is its own call',
  );
});

t.test('an informational 103 is not forwarded; the final answer is', async (t) => {
  const proxy = await proxyFor(t);
  const server = createServer((_req, res) => {
    res.writeEarlyHints({ link: '</style.css>; rel=preload' });
    res.end('final');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const r = await rawRequest(proxy.port, `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`);
  t.equal(r.status, 200);
  t.notMatch(r.raw, /103/);
  t.match(r.body, /final/);
});

t.test('an upstream that dies mid-answer: the client connection is cut, the call ends in error', async (t) => {
  const proxy = await proxyFor(t);
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-length': '1000' });
    res.write('partial');
    setTimeout(() => req.socket.destroy(), 50);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const r = await rawRequest(proxy.port, `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
  t.equal(r.status, 200);
  t.ok(r.closedByPeer, 'cut, not left hanging');
  t.equal(r.body, 'partial');
  const closed = await proxy.waitFor((e) => e.event === 'egress.closed');
  t.equal(closed.end, 'error');
});

t.test('an upstream that closes without answering: 502 upstream_unreachable', async (t) => {
  const proxy = await proxyFor(t);
  const server = createServer((req) => req.socket.destroy());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const r = await rawRequest(proxy.port, `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`);
  t.equal(r.status, 502);
  t.equal(JSON.parse(r.body).error.code, 'upstream_unreachable');
});

t.test('a kept-alive upstream connection closed while idle: the next bodiless request is retried on a fresh one', async (t) => {
  const proxy = await proxyFor(t);
  const sockets: Socket[] = [];
  const server = createServer({ keepAliveTimeout: 60_000 }, (_req, res) => res.end('ok'));
  server.on('connection', (s: Socket) => sockets.push(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const get = () =>
    rawRequest(proxy.port, `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`);
  t.equal((await get()).status, 200);
  // Close the upstream side without the proxy noticing first: the FIN races the next request.
  for (const s of sockets) s.destroy();
  const again = await get();
  t.equal(again.status, 200);
  t.equal(again.body, 'ok');
  t.equal(sockets.length, 2);
});

t.test('a reused upstream connection that fails before answering: a bodiless request is retried once on a fresh one', async (t) => {
  const proxy = await proxyFor(t);
  let connections = 0;
  // Answers the first request on each connection and drops the connection on the second: what
  // a server that timed out the idle connection at the same moment looks like to the proxy.
  const server = createNetServer((socket) => {
    connections++;
    let requests = 0;
    let data = '';
    socket.on('data', (d) => {
      data += d.toString('latin1');
      while (data.includes('\r\n\r\n')) {
        data = data.slice(data.indexOf('\r\n\r\n') + 4);
        if (++requests === 1) socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout=60\r\n\r\nok');
        else socket.destroy();
      }
    });
    socket.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const get = (method = 'GET', body = '') =>
    rawRequest(
      proxy.port,
      `${method} http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n${body ? `Content-Length: ${body.length}\r\n` : ''}\r\n${body}`,
    );
  t.equal((await get()).status, 200);
  const retried = await get();
  t.equal(retried.status, 200, 'answered after one retry');
  t.equal(connections, 2, 'the retry used a fresh connection');
  // A request with a body is never sent twice: the failure is the answer.
  const withBody = await get('POST', 'once');
  t.equal(withBody.status, 502);
  t.equal(JSON.parse(withBody.body).error.code, 'upstream_unreachable');
  t.equal(connections, 2);
});

t.test('a client that leaves mid-answer ends the call as client_closed and frees the upstream connection', async (t) => {
  const proxy = await proxyFor(t);
  const upstreamClosed: Promise<void>[] = [];
  let connections = 0;
  const server = createServer((req, res) => {
    if (req.url === '/after') return void res.end('after');
    upstreamClosed.push(new Promise((r) => req.socket.once('close', () => r())));
    res.writeHead(200, { 'content-length': '100000000' });
    res.write('x'.repeat(1000));
  });
  server.on('connection', () => connections++);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const socket = connect({ host: '127.0.0.1', port: proxy.port });
  socket.write(`GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
  await new Promise((r) => socket.once('data', r));
  socket.destroy();
  const closed = await proxy.waitFor((e) => e.event === 'egress.closed');
  t.equal(closed.end, 'client_closed');
  await upstreamClosed[0];
  t.equal(proxy.running.proxy.activeCalls, 0);
  // Had the half-read connection gone back to the pool, this request would be sent on it.
  const next = await rawRequest(
    proxy.port,
    `GET http://127.0.0.1:${port}/after HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`,
  );
  t.equal(next.status, 200);
  t.equal(next.body, 'after');
  t.equal(connections, 2, 'the next request got a new upstream connection');
});

t.test('odd upstreams and URLs: a close-delimited HTTP/1.0 answer, a raw non-ASCII byte in the path', async (t) => {
  const proxy = await proxyFor(t);
  const port = await new Promise<number>((resolve) => {
    const server = createNetServer((s) => {
      s.once('data', () => s.end('HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end'));
      s.on('error', () => {});
    });
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port));
    t.teardown(() => server.close());
  });
  const r = await rawRequest(proxy.port, `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`);
  t.equal(r.status, 200);
  t.match(r.body, /until the end/);
  const odd = await rawRequest(
    proxy.port,
    Buffer.concat([
      Buffer.from(`GET http://127.0.0.1:${port}/caf`),
      Buffer.from([0xe9]),
      Buffer.from(` HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`),
    ]),
  );
  t.equal(odd.status, 400, 'refused with an answer, not dropped');
  t.equal(JSON.parse(odd.body).error.code, 'bad_request');
  t.ok(odd.closedByPeer);
  const after = await rawRequest(
    proxy.port,
    `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`,
  );
  t.equal(after.status, 200, 'and the proxy keeps serving');
});

t.test(
  'an answer the client stops reading ends after tunnel_idle_timeout_ms (idle_timeout), as an idle tunnel does (red team 29)',
  async (t) => {
    const proxy = await startTestProxyFor(t, { policy: POLICY, config: 'limits: {tunnel_idle_timeout_ms: 400}' });
    const server = createServer((_req, res) => {
      // Far more than the socket buffers on both sides hold: the proxy's writes stall.
      res.writeHead(200, { 'content-length': String(64 * 1024 * 1024) });
      const chunk = Buffer.alloc(64 * 1024, 0x78);
      const more = () => {
        while (res.write(chunk));
      };
      res.on('drain', more);
      more();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    t.teardown(() => {
      server.closeAllConnections();
      server.close();
    });
    const port = (server.address() as AddressInfo).port;
    const socket = connect({ host: '127.0.0.1', port: proxy.port });
    socket.on('error', () => {});
    const closedSocket = new Promise((r) => socket.once('close', r));
    socket.write(`GET http://127.0.0.1:${port}/big HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
    await new Promise((r) => socket.once('data', r));
    socket.pause(); // reads nothing more
    const started = performance.now();
    const closed = await proxy.waitFor((e) => e.event === 'egress.closed', 10_000);
    t.equal(closed.end, 'idle_timeout', 'the call ends idle_timeout');
    t.ok(performance.now() - started < 5000, 'soon after the timeout');
    socket.resume(); // what was sent before the close, then the close itself
    await closedSocket;
    t.pass('the client connection is closed');
    t.equal(proxy.running.proxy.activeCalls, 0, 'nothing left open');
  },
);

t.test('a request body that stops: a FIN or reset ends the call at once, silence after tunnel_idle_timeout_ms (red team 30)', async (t) => {
  const proxy = await startTestProxyFor(t, { policy: POLICY, config: 'limits: {tunnel_idle_timeout_ms: 400}' });
  // The upstream reads the body as it comes and never answers: only the proxy can end the call.
  const server = createServer((req) => req.resume());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  const port = (server.address() as AddressInfo).port;
  const head = `POST http://127.0.0.1:${port}/sink HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 100000000\r\n\r\n`;
  for (const [how, expected] of [
    ['FIN', 'client_closed'],
    ['reset', 'client_closed'],
    ['nothing more', 'idle_timeout'],
  ] as const) {
    const before = proxy.events('egress.closed').length;
    const socket = connect({ host: '127.0.0.1', port: proxy.port });
    socket.on('error', () => {});
    const socketClosed = new Promise((r) => socket.once('close', r));
    socket.write(head + 'x'.repeat(1000));
    await proxy.waitFor((e) => e.event === 'egress.decision' && e.port === port && proxy.events('egress.decision').length > before);
    await new Promise((r) => setTimeout(r, 100));
    const started = performance.now();
    if (how === 'FIN') socket.end();
    else if (how === 'reset') socket.resetAndDestroy();
    while (proxy.events('egress.closed').length === before && performance.now() - started < 5000)
      await new Promise((r) => setTimeout(r, 20));
    const closed = proxy.events('egress.closed').slice(before);
    t.equal(closed.length, 1, `${how}: the call ended, with its closed event`);
    t.equal(closed[0]?.end, expected, `${how}: ended ${expected}`);
    // FIN and reset: at once; silence: the timeout (400 ms) and at most one more period.
    t.ok(
      performance.now() - started < (how === 'nothing more' ? 1500 : 500),
      `${how}: within ${Math.round(performance.now() - started)} ms`,
    );
    await socketClosed;
    t.equal(proxy.running.proxy.activeCalls, 0, `${how}: nothing left open`);
  }
});

t.test('a request body that keeps coming, however slowly, is not cut while it moves', async (t) => {
  const proxy = await startTestProxyFor(t, { policy: POLICY, config: 'limits: {tunnel_idle_timeout_ms: 400}' });
  const upstream = await startUpstream();
  t.teardown(() => upstream.close());
  const socket = connect({ host: '127.0.0.1', port: proxy.port });
  socket.on('error', () => {});
  let answer = '';
  socket.on('data', (d: Buffer) => (answer += d.toString('latin1')));
  socket.write(
    `POST http://127.0.0.1:${upstream.port}/slow-body HTTP/1.1\r\nHost: 127.0.0.1:${upstream.port}\r\nContent-Length: 10\r\n\r\n`,
  );
  for (let i = 0; i < 10; i++) {
    await new Promise((r) => setTimeout(r, 250)); // 2.5 s in all, a byte every 250 ms
    socket.write('b');
  }
  const deadline = performance.now() + 3000;
  while (!answer.includes('\r\n\r\n') && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.match(answer, /^HTTP\/1\.1 200 /, 'answered');
  t.equal(upstream.requests[0]?.body, 'bbbbbbbbbb', 'the whole body reached the upstream');
  socket.destroy();
});
