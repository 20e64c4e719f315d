/**
 * Answered connections are closed by the proxy itself (interface.md "Proxying"): after a raw
 * answer (a refused CONNECT, a bad head, 408, 503) the socket is gone within a second even when
 * the client never closes its side, and a client that sends nothing is cut at
 * `limits.header_timeout_ms`. So neither idle nor refused clients can hold
 * `limits.max_connections` against a well-behaved one, on the CONNECT path or node:http's.
 *
 * The attacker here is the guarded server itself: raw sockets with `allowHalfOpen`, which read
 * the answer and then never close, never send again.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import t from 'tap';
import { startTestProxyFor } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { connectRequest, getRequest, rawRequest } from '../helpers/raw.js';
import { startUpstream } from '../helpers/upstream.js';
import type { TestUpstream } from '../helpers/upstream.js';

const ALLOW = 'version: 1\ndefault_verdict: allow\nrules: []\n';
/** How late after its answer a refused connection may still hold its slot (the spec's second). */
const GONE_WITHIN_MS = 1000;

interface Stubborn {
  readonly socket: Socket;
  /** Resolves with the answer's first bytes and when they arrived. */
  readonly answered: Promise<{ text: string; at: number }>;
}

/** A client that sends `request` (or nothing), reads, and never closes or sends again. */
async function stubborn(port: number, request: string | null): Promise<Stubborn> {
  const socket = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
  socket.on('error', () => {});
  await once(socket, 'connect');
  if (request !== null) socket.write(request);
  let text = '';
  const answered = new Promise<{ text: string; at: number }>((resolve) => {
    socket.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      if (/\r\n\r\n/.test(text)) resolve({ text, at: Date.now() });
    });
    socket.on('close', () => resolve({ text, at: Date.now() }));
  });
  return { socket, answered };
}

/** Retries a plain GET through the proxy until it is answered 200; the time it first was. */
async function servedAt(proxy: TestProxy, upstream: TestUpstream, giveUpAfterMs: number, extraHeaders = ''): Promise<number | null> {
  const target = `127.0.0.1:${upstream.port}`;
  const deadline = Date.now() + giveUpAfterMs;
  while (Date.now() < deadline) {
    const r = await rawRequest(proxy.port, getRequest(`http://${target}/ok`, target, extraHeaders), 1000).catch(() => null);
    if (r?.status === 200) return Date.now();
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return null;
}

async function setup(
  t: { teardown(fn: () => unknown): void },
  config: string,
  policy = ALLOW,
): Promise<{ proxy: TestProxy; upstream: TestUpstream }> {
  const upstream = await startUpstream();
  t.teardown(() => upstream.close());
  const proxy = await startTestProxyFor(t, { policy, config });
  return { proxy, upstream };
}

const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const bigHead = (line: string) => `${line}\r\nx-big: ${'x'.repeat(3000)}\r\n\r\n`;
const credentials = `Proxy-Authorization: Basic ${Buffer.from('u:p').toString('base64')}\r\n`;

// Each case: one slot (max_connections: 1, plus one per holder the case needs), a stubborn
// client answered `status` that keeps its socket; a well-behaved client must be served within a
// second of that answer (header_timeout_ms plus a second for the silent ones).
const cases: Array<{ name: string; status: number; request: string | null; config?: string; tunnel?: boolean; served?: string }> = [
  { name: 'CONNECT refused by the baseline', status: 403, request: connectRequest('10.1.2.3:80') },
  {
    name: 'CONNECT without credentials',
    status: 407,
    request: connectRequest('a.test:443'),
    config: `auth: {users: [{name: u, password_sha256: ${sha('p')}}]}`,
    served: credentials,
  },
  { name: 'CONNECT over the tunnel limit', status: 429, request: null, tunnel: true },
  { name: 'CONNECT to a closed port', status: 502, request: connectRequest('127.0.0.1:1') },
  {
    name: 'CONNECT dial timed out',
    status: 504,
    request: connectRequest('203.0.113.9:80'),
    config: 'baseline: {allow_cidrs: [203.0.113.9/32, 127.0.0.0/8]}',
  },
  { name: 'CONNECT target without a port', status: 400, request: connectRequest('a.test') },
  { name: 'malformed CONNECT head', status: 400, request: 'CONNECT a.test:443 HTTP/1.1\r\nbad header\r\n\r\n' },
  { name: 'CONNECT head too large', status: 431, request: bigHead('CONNECT a.test:443 HTTP/1.1') },
  { name: 'silent client (CONNECT path: nothing sent)', status: 408, request: null },
  { name: 'CONNECT head never finished', status: 408, request: 'CONNECT a.test:443 HTTP/1.1\r\n' },
  { name: 'plain request head never finished (node:http)', status: 408, request: 'GET http://a.test/ HTTP/1.1\r\n' },
  { name: 'garbage (node:http)', status: 400, request: 'GARBAGE GARBAGE\r\n\r\n' },
  { name: 'plain request head too large (node:http)', status: 431, request: bigHead('GET http://a.test/ HTTP/1.1') },
  { name: 'plain request refused (node:http)', status: 403, request: 'GET http://10.1.2.3/ HTTP/1.1\r\nHost: 10.1.2.3\r\n\r\n' },
];

for (const c of cases) {
  t.test(`${c.name}: answered ${c.status}, then gone though the client stays`, async (t) => {
    const holders = c.tunnel ? 1 : 0;
    const { proxy, upstream } = await setup(
      t,
      [
        `limits: {max_connections: ${1 + holders}, header_timeout_ms: 500, connect_timeout_ms: 300, max_tunnels_per_client: 1, max_header_bytes: 2048}`,
        c.config ?? '',
      ].join('\n'),
    );
    const target = `127.0.0.1:${upstream.port}`;
    let request = c.request;
    if (c.tunnel) {
      const tunnel = await stubborn(proxy.port, connectRequest(target));
      t.teardown(() => tunnel.socket.destroy());
      t.match((await tunnel.answered).text, /^HTTP\/1\.1 200/, 'the first tunnel is open');
      request = connectRequest(target);
    }
    const client = await stubborn(proxy.port, request);
    t.teardown(() => client.socket.destroy());
    const answer = await client.answered;
    t.match(answer.text, new RegExp(`^HTTP/1\\.1 ${c.status} `), `answered ${c.status}`);
    const served = await servedAt(proxy, upstream, 3000, c.served);
    t.ok(served !== null, 'a well-behaved client is served');
    const late = (served ?? Infinity) - answer.at;
    t.ok(late < GONE_WITHIN_MS, `served ${late} ms after the answer (the refused client still has its socket open)`);
    t.notOk(client.socket.destroyed, 'the refused client never closed');
  });
}

t.test('max_connections idle and refused clients cannot lock out a well-behaved client', async (t) => {
  const headerTimeoutMs = 500;
  const max = 6;
  const { proxy, upstream } = await setup(t, `limits: {max_connections: ${max}, header_timeout_ms: ${headerTimeoutMs}}`);
  const started = Date.now();
  const attackers: Stubborn[] = [];
  t.teardown(() => attackers.forEach((a) => a.socket.destroy()));
  // Half the slots idle, half refused; then as many again, answered 503 overloaded, who stay too.
  for (let i = 0; i < max / 2; i++) attackers.push(await stubborn(proxy.port, null));
  for (let i = 0; i < max / 2; i++) attackers.push(await stubborn(proxy.port, connectRequest('10.1.2.3:80')));
  for (let i = 0; i < max / 2; i++) attackers.push(await stubborn(proxy.port, getRequest('http://10.1.2.3/', '10.1.2.3')));
  for (let i = 0; i < max / 2; i++) attackers.push(await stubborn(proxy.port, connectRequest('10.1.2.3:80')));
  const answers = await Promise.all(attackers.slice(max).map((a) => a.answered));
  t.ok(
    answers.every((a) => /^HTTP\/1\.1 503 /.test(a.text)),
    'the proxy was full: the later attackers were answered 503',
  );
  const served = await servedAt(proxy, upstream, headerTimeoutMs + 3000);
  t.ok(served !== null, 'served');
  const waited = (served ?? Infinity) - started;
  t.ok(waited < headerTimeoutMs + 1000, `served ${waited} ms after the attack began (header_timeout_ms ${headerTimeoutMs} + 1 s)`);
  t.ok(
    attackers.every((a) => !a.socket.destroyed),
    'no attacker closed its side',
  );
});

t.test('503 overloaded answers to plain HTTP do not leak their slots', async (t) => {
  // The header timeout is long so the holders keep the proxy full while the 503s are answered.
  const max = 2;
  const { proxy, upstream } = await setup(t, `limits: {max_connections: ${max}, header_timeout_ms: 10000}`);
  const target = `127.0.0.1:${upstream.port}`;
  const holders: Socket[] = [];
  for (let i = 0; i < max; i++) {
    const s = connect({ host: '127.0.0.1', port: proxy.port });
    await once(s, 'connect');
    holders.push(s);
  }
  // Ordinary clients that close when answered: 3 × max_connections of them, one after another.
  for (let i = 0; i < 3 * max; i++) {
    const r = await rawRequest(proxy.port, getRequest(`http://${target}/ok`, target));
    t.equal(r.status, 503, `request ${i + 1}: overloaded`);
  }
  for (const s of holders) s.destroy();
  const start = Date.now();
  const served = await servedAt(proxy, upstream, 3000);
  t.ok(served !== null, 'once every client has gone, a well-behaved client is served');
  t.ok((served ?? Infinity) - start < GONE_WITHIN_MS, `within ${(served ?? Infinity) - start} ms`);
});

t.test('refused plain HTTP closes the connection; a 407 keeps it for the retry with credentials', async (t) => {
  const { proxy, upstream } = await setup(t, `auth: {users: [{name: u, password_sha256: ${sha('p')}}]}\nlimits: {header_timeout_ms: 500}`);
  const target = `127.0.0.1:${upstream.port}`;
  const socket = connect({ host: '127.0.0.1', port: proxy.port, allowHalfOpen: true });
  socket.on('error', () => {});
  await once(socket, 'connect');
  let text = '';
  socket.on('data', (d: Buffer) => (text += d.toString('latin1')));
  socket.write(`GET http://${target}/ok HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  while (!/\r\n\r\n[^]*\}$/.test(text)) await new Promise((r) => setTimeout(r, 10));
  t.match(text, /^HTTP\/1\.1 407 /);
  t.notMatch(text, /connection: close/i, '407 keeps the connection for the retry');
  text = '';
  socket.write(`GET http://10.1.2.3/ HTTP/1.1\r\nHost: 10.1.2.3\r\n${credentials}\r\n`);
  await once(socket, 'end');
  t.match(text, /^HTTP\/1\.1 403 [^]*connection: close/i, 'a refusal answers with Connection: close and closes');
});

t.test('a kept-alive idle connection is closed at header_timeout_ms when that is shorter than the keep-alive timeout', async (t) => {
  const { proxy, upstream } = await setup(t, 'limits: {header_timeout_ms: 400}');
  const target = `127.0.0.1:${upstream.port}`;
  const socket = connect({ host: '127.0.0.1', port: proxy.port, allowHalfOpen: true });
  socket.on('error', () => {});
  await once(socket, 'connect');
  let text = '';
  socket.on('data', (d: Buffer) => (text += d.toString('latin1')));
  socket.write(`GET http://${target}/ok HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  while (!/^HTTP\/1\.1 200 /.test(text)) await new Promise((r) => setTimeout(r, 10));
  const answered = Date.now();
  await once(socket, 'end');
  const idle = Date.now() - answered;
  t.ok(idle < 400 + GONE_WITHIN_MS, `closed ${idle} ms after the answer`);
});

t.test('after a 408 on the node:http path, finishing the request head gets nothing forwarded', async (t) => {
  const { proxy, upstream } = await setup(t, 'limits: {header_timeout_ms: 300}');
  const target = `127.0.0.1:${upstream.port}`;
  const socket = connect({ host: '127.0.0.1', port: proxy.port, allowHalfOpen: true });
  socket.on('error', () => {});
  await once(socket, 'connect');
  let text = '';
  socket.on('data', (d: Buffer) => {
    text += d.toString('latin1');
    // The moment the 408 arrives, the rest of the head: node's parser still reads this socket.
    if (/^HTTP\/1\.1 408 /.test(text) && socket.writable) socket.write('\r\n');
  });
  socket.write(`GET http://${target}/late HTTP/1.1\r\nHost: ${target}\r\n`);
  await once(socket, 'end');
  await new Promise((r) => setTimeout(r, 300));
  t.match(text, /^HTTP\/1\.1 408 /);
  t.notMatch(text, /HTTP\/1\.1 200/, 'no second answer');
  t.equal(upstream.requests.length, 0, 'nothing reached the upstream');
});

t.test('a head that turns out late not to be a CONNECT is still cut at header_timeout_ms from the connection opening', async (t) => {
  const headerTimeoutMs = 600;
  const { proxy } = await setup(t, `limits: {header_timeout_ms: ${headerTimeoutMs}}`);
  const socket = connect({ host: '127.0.0.1', port: proxy.port, allowHalfOpen: true });
  socket.on('error', () => {});
  await once(socket, 'connect');
  const opened = Date.now();
  let text = '';
  socket.on('data', (d: Buffer) => (text += d.toString('latin1')));
  // `CO` could still be CONNECT (the proxy's own reader waits); `PY` makes it node:http's, late.
  socket.write('CO');
  await new Promise((r) => setTimeout(r, 400));
  socket.write('PY http://a.test/ HTTP/1.1\r\nHost: a.test\r\n');
  await once(socket, 'end');
  const cut = Date.now() - opened;
  t.match(text, /^HTTP\/1\.1 408 /);
  t.ok(
    cut < headerTimeoutMs + 250,
    `cut ${cut} ms after the connection opened (header_timeout_ms ${headerTimeoutMs}), not after the hand-off`,
  );
});

t.test('a request head completed in time on the node:http path is served, and the deadline no longer applies', async (t) => {
  const { proxy, upstream } = await setup(t, 'limits: {header_timeout_ms: 400}');
  const target = `127.0.0.1:${upstream.port}`;
  const socket = connect({ host: '127.0.0.1', port: proxy.port });
  socket.on('error', () => {});
  await once(socket, 'connect');
  let text = '';
  socket.on('data', (d: Buffer) => (text += d.toString('latin1')));
  socket.write(`GET http://${target}/slow-body HTTP/1.1\r\nHost: ${target}\r\nContent-Length: 4\r\n\r\nab`);
  // The body arrives after the deadline: the head was complete in time, so the call goes on.
  await new Promise((r) => setTimeout(r, 600));
  socket.write('cd');
  while (!/\r\n\r\n[^]*\}/.test(text) && !socket.destroyed) await new Promise((r) => setTimeout(r, 10));
  t.match(text, /^HTTP\/1\.1 200 /);
  socket.destroy();
});

t.test('a refused client that closes frees its slot at once, not after the grace period', async (t) => {
  const { proxy, upstream } = await setup(t, 'limits: {max_connections: 1}');
  for (const [name, request] of [
    ['refused CONNECT', connectRequest('10.1.2.3:80')],
    ['malformed plain request (node:http)', 'GARBAGE GARBAGE\r\n\r\n'],
  ] as const) {
    // rawRequest closes its side when the proxy does (an ordinary client).
    const r = await rawRequest(proxy.port, request);
    t.ok(r.status >= 400, `${name}: answered ${r.status}`);
    const closed = Date.now();
    const served = await servedAt(proxy, upstream, 2000);
    const waited = (served ?? Infinity) - closed;
    // The grace period is 500 ms: served well before it means the client's close was seen.
    t.ok(waited < 350, `${name}: served ${waited} ms after the client closed`);
  }
});

t.test('a malformed request behind an answer already streaming cuts the connection, and writes nothing into that answer', async (t) => {
  const slow = await startUpstream('127.0.0.1', {
    respond: (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '10' });
      res.write('01234');
      setTimeout(() => res.end('56789'), 300);
    },
  });
  t.teardown(() => slow.close());
  const proxy = await startTestProxyFor(t, { policy: ALLOW });
  const target = `127.0.0.1:${slow.port}`;
  const socket = connect({ host: '127.0.0.1', port: proxy.port });
  socket.on('error', () => {});
  await once(socket, 'connect');
  let text = '';
  let sentGarbage = false;
  socket.on('data', (d: Buffer) => {
    text += d.toString('latin1');
    // The answer has begun: now a second, malformed request on the same connection.
    if (!sentGarbage && text.includes('01234')) {
      sentGarbage = true;
      socket.write('GARBAGE GARBAGE\r\n\r\n');
    }
  });
  socket.write(`GET http://${target}/ HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  await once(socket, 'close');
  t.ok(sentGarbage);
  t.notMatch(text, /HTTP\/1\.1 400/, 'no 400 written into the middle of the first answer');
  const closed = await proxy.waitFor((e) => e.event === 'egress.closed');
  t.equal(closed.end, 'error', 'cut by the proxy, not left by the client: the call ends error (red team 30)');
});

t.test(
  'malformed bytes behind an answer not yet begun: that answer goes out, then the connection ends; nothing after it is served (red team 29)',
  async (t) => {
    const slow = await startUpstream('127.0.0.1', {
      respond: (_req, res) => setTimeout(() => res.end('first answer'), 300),
    });
    t.teardown(() => slow.close());
    const proxy = await startTestProxyFor(t, { policy: ALLOW });
    const target = `127.0.0.1:${slow.port}`;
    const get = (path: string) => `GET http://${target}${path} HTTP/1.1\r\nHost: ${target}\r\n\r\n`;
    for (const [name, after] of [
      ['garbage', 'GARBAGE GARBAGE\r\n\r\n'],
      ['a request, then garbage', `${get('/2')}GARBAGE GARBAGE\r\n\r\n`],
      ['one byte after Connection: close', null],
    ] as const) {
      const seenBefore = slow.requests.length;
      const socket = connect({ host: '127.0.0.1', port: proxy.port });
      socket.on('error', () => {});
      let text = '';
      socket.on('data', (d: Buffer) => (text += d.toString('latin1')));
      socket.write(after === null ? `GET http://${target}/1 HTTP/1.1\r\nHost: ${target}\r\nConnection: close\r\n\r\nX` : get('/1') + after);
      await once(socket, 'close');
      t.match(text, /^HTTP\/1\.1 200 OK\r\n[^]*first answer$/, `${name}: the first request's own answer, whole`);
      t.match(text, /\r\nConnection: close\r\n/i, `${name}: saying the connection ends (red team 30)`);
      t.notMatch(text, /HTTP\/1\.1 4\d\d/, `${name}: no 4xx in its place`);
      t.same(
        slow.requests.slice(seenBefore).map((r) => r.url),
        ['/1'],
        `${name}: nothing after it reached the upstream`,
      );
    }
  },
);
