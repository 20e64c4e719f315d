/**
 * Red-team F1/F2 (pipelined CONNECT): a CONNECT pipelined on a kept-alive plain-HTTP connection
 * behind a GET whose answer is still pending waits for that answer; the tunnel then carries only
 * the upstream's bytes, and no next-head deadline (408) ever reaches it. Also: behind more than
 * PIPELINE_LIMIT requests (the pipeline paused the socket while node:http read it) the tunnel
 * still hears the client; a client resetting meanwhile crashes nothing; an Upgrade head is
 * refused only after the earlier answers.
 */
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import type { ServerResponse } from 'node:http';
import t from 'tap';
import { EARLY_BYTES_LIMIT, PIPELINE_LIMIT } from '../../src/proxy/pipeline.js';
import { startTestProxy } from '../helpers/proxy.js';
import { connectRequest, rawRequest } from '../helpers/raw.js';
import { startUpstream } from '../helpers/upstream.js';

const HEADER_TIMEOUT_MS = 600;
const BANNER = 'tunnel-upstream-banner\n';

/** A raw TCP upstream for the tunnel: sends a banner, then echoes with a prefix. */
async function startTunnelUpstream(): Promise<{ port: number; server: Server }> {
  const server = createServer((socket) => {
    socket.on('error', () => {});
    socket.write(BANNER);
    socket.on('data', (d: Buffer) => socket.write(`echo:${d.toString('latin1')}`));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return { port: (server.address() as AddressInfo).port, server };
}

/** A GET to `target` through the proxy that keeps the connection open (pipelining). */
const keptAliveGet = (target: string, path: string) => `GET http://${target}${path} HTTP/1.1\r\nHost: ${target}\r\n\r\n`;

/** A raw client of the proxy: what it has received so far, and when it closes. */
function openClient(port: number) {
  const client = connect({ host: '127.0.0.1', port });
  client.on('error', () => {});
  let data = '';
  client.on('data', (d: Buffer) => (data += d.toString('latin1')));
  const closed = new Promise<void>((resolve) => client.on('close', () => resolve()));
  return { client, received: () => data, closed };
}

/** A proxy, an HTTP upstream that holds every request (`held`) until the test answers it, and a tunnel upstream. */
async function slowAndTunnel(t: { teardown(fn: () => unknown): void }, options: Parameters<typeof startTestProxy>[0]) {
  const held: ServerResponse[] = [];
  const slow = await startUpstream('127.0.0.1', { respond: (_req, res) => held.push(res) });
  const tunnelUp = await startTunnelUpstream();
  const proxy = await startTestProxy(options);
  t.teardown(async () => {
    for (const res of held) res.destroy();
    await proxy.stop();
    await slow.close();
    await new Promise<void>((resolve) => tunnelUp.server.close(() => resolve()));
  });
  return { held, proxy, slowPort: slow.port, slowTarget: `127.0.0.1:${slow.port}`, tunnelUp, tunnelTarget: `127.0.0.1:${tunnelUp.port}` };
}

t.test('a CONNECT pipelined behind a pending GET waits for its answer; no 408 reaches the tunnel', async (t) => {
  const { held, proxy, slowPort, slowTarget, tunnelUp, tunnelTarget } = await slowAndTunnel(t, {
    policy: 'version: 1\ndefault_verdict: allow\n',
    config: `limits: {header_timeout_ms: ${HEADER_TIMEOUT_MS}}`,
  });
  const { client, received, closed } = openClient(proxy.port);
  // One write: the GET, the CONNECT and the client's first tunnel bytes.
  client.write(keptAliveGet(slowTarget, '/slow') + connectRequest(tunnelTarget) + 'early-bytes\n');
  while (held.length === 0) await new Promise((r) => setTimeout(r, 10));
  // The GET is in flight: nothing may have been answered yet (no 200 before the GET's answer).
  await new Promise((r) => setTimeout(r, 200));
  t.equal(received(), '', 'nothing is answered while the earlier GET is pending');
  t.equal(proxy.events('egress.decision').filter((e) => e.port === tunnelUp.port).length, 0, 'the CONNECT is not yet decided');

  const body = 'slow-answer-body';
  (held[0] as ServerResponse).setHeader('content-length', String(body.length));
  (held[0] as ServerResponse).end(body);
  const established = 'HTTP/1.1 200 Connection Established\r\n\r\n';
  const deadline = Date.now() + 5000;
  while (!received().includes(`echo:early-bytes\n`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  const getEnd = received().indexOf(body) + body.length;
  t.match(received().slice(0, getEnd), /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nslow-answer-body$/, 'the GET answer comes first, whole');
  t.equal(received().slice(getEnd), `${established}${BANNER}echo:early-bytes\n`, 'then the 200 and exactly the upstream bytes');

  // Past the header timeout (and node:http's keep-alive timeout) the tunnel is still open and clean.
  await new Promise((r) => setTimeout(r, HEADER_TIMEOUT_MS * 3));
  t.notOk(client.destroyed, 'the tunnel is still open after header_timeout_ms');
  client.write('later\n');
  const later = Date.now() + 2000;
  while (!received().endsWith('echo:later\n') && Date.now() < later) await new Promise((r) => setTimeout(r, 10));
  t.equal(received().slice(getEnd), `${established}${BANNER}echo:early-bytes\necho:later\n`, 'no 408 nor anything else in the tunnel');

  client.end();
  await closed;
  const decisions = proxy.events('egress.decision');
  const get = decisions.find((e) => e.port === slowPort);
  const tunnel = decisions.find((e) => e.port === tunnelUp.port);
  t.equal(get?.method, 'GET', 'the GET was decided');
  t.equal(tunnel?.method, 'CONNECT', 'the CONNECT was decided');
  const closedTunnel = await proxy.waitFor((e) => e.event === 'egress.closed' && e.conn_id === tunnel?.conn_id);
  t.equal(closedTunnel.end, 'client_closed', 'the tunnel closed when the client ended it');
  t.equal(closedTunnel.bytes_up, 'early-bytes\nlater\n'.length, 'the upstream got exactly the client bytes');
  t.equal(closedTunnel.bytes_down, BANNER.length + 'echo:early-bytes\necho:later\n'.length, 'and sent exactly its own');
  const closedGet = await proxy.waitFor((e) => e.event === 'egress.closed' && e.conn_id === get?.conn_id);
  t.ok(closedGet, 'the GET has its closed event');
  t.equal(proxy.events().filter((e) => e.code === 'request_timeout').length, 0, 'no request_timeout was logged');
});

t.test('a CONNECT behind more than PIPELINE_LIMIT requests: what the client sends meanwhile reaches the tunnel', async (t) => {
  const { held, proxy, slowTarget, tunnelTarget } = await slowAndTunnel(t, {
    policy: 'version: 1\ndefault_verdict: allow\n',
    config: 'limits: {header_timeout_ms: 5000}',
  });
  const requests = PIPELINE_LIMIT + 8;
  const client = connect({ host: '127.0.0.1', port: proxy.port });
  client.on('error', () => {});
  let data = '';
  client.on('data', (d: Buffer) => (data += d.toString('latin1')));
  client.write(keptAliveGet(slowTarget, '/q').repeat(requests) + connectRequest(tunnelTarget));
  const waitHeld = async (n: number) => {
    const deadline = Date.now() + 5000;
    while (held.length < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  };
  // Answered as they are admitted (PIPELINE_LIMIT at a time) until the last ones are in flight.
  let answered = 0;
  while (requests - answered > PIPELINE_LIMIT) {
    await waitHeld(PIPELINE_LIMIT);
    t.equal(held.length, PIPELINE_LIMIT, `PIPELINE_LIMIT in flight after ${answered} answers`);
    for (const res of held.splice(0)) {
      res.end('a');
      answered++;
    }
  }
  await waitHeld(requests - answered);
  t.equal(held.length, requests - answered, 'the last requests are in flight');
  // Sent now, these bytes belong to the tunnel to be: kept for it, not lost nor parsed.
  client.write('mid-bytes\n');
  await new Promise((r) => setTimeout(r, 200));
  for (const res of held.splice(0)) res.end('a');
  const deadline = Date.now() + 5000;
  while (!data.includes('echo:mid-bytes\n') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  const established = data.indexOf('HTTP/1.1 200 Connection Established\r\n\r\n');
  t.equal((data.slice(0, established).match(/HTTP\/1\.1 200 OK\r\n/g) ?? []).length, requests, 'every GET answer precedes the 200');
  t.equal(
    data.slice(established),
    `HTTP/1.1 200 Connection Established\r\n\r\n${BANNER}echo:mid-bytes\n`,
    'the tunnel got the bytes sent while it waited',
  );
  client.destroy();
});

t.test('a client resetting while its pipelined CONNECT waits: no tunnel, no crash', async (t) => {
  const { held, proxy, slowPort, slowTarget, tunnelUp, tunnelTarget } = await slowAndTunnel(t, {
    policy: 'version: 1\ndefault_verdict: allow\n',
    config: 'limits: {header_timeout_ms: 5000}',
  });
  const client = connect({ host: '127.0.0.1', port: proxy.port });
  client.on('error', () => {});
  await new Promise((resolve) => client.once('connect', resolve));
  client.write(keptAliveGet(slowTarget, '/slow') + connectRequest(tunnelTarget));
  while (held.length === 0) await new Promise((r) => setTimeout(r, 10));
  client.resetAndDestroy();
  await new Promise((r) => setTimeout(r, 100));
  // The proxy's write of the answer meets the reset (an 'error' on a socket node:http let go of).
  (held[0] as ServerResponse).end('late answer');
  const get = await proxy.waitFor((e) => e.event === 'egress.decision' && e.port === slowPort);
  await proxy.waitFor((e) => e.event === 'egress.closed' && e.conn_id === get.conn_id);
  await new Promise((r) => setTimeout(r, 200));
  t.equal(proxy.events('egress.decision').filter((e) => e.port === tunnelUp.port).length, 0, 'the CONNECT was never decided');
  const after = await rawRequest(proxy.port, connectRequest(tunnelTarget), 1000);
  t.equal(after.status, 200, 'the proxy still serves');
});

t.test('an Upgrade pipelined behind a pending GET is refused after the GET is answered', async (t) => {
  const { held, proxy, slowTarget } = await slowAndTunnel(t, {
    policy: 'version: 1\ndefault_verdict: allow\n',
    config: 'limits: {header_timeout_ms: 5000}',
  });
  const { client, received, closed } = openClient(proxy.port);
  client.write(
    keptAliveGet(slowTarget, '/slow') +
      `GET http://${slowTarget}/ws HTTP/1.1\r\nHost: ${slowTarget}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`,
  );
  while (held.length === 0) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 100));
  t.equal(received(), '', 'nothing is answered while the earlier GET is pending');
  (held[0] as ServerResponse).end('first');
  await closed;
  t.match(received(), /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nfirst(HTTP\/1\.1 400 [^]*)$/, 'the GET answer, then the 400');
  t.match(received(), /"code":"bad_request"/, 'the refusal says why');
});

t.test('a CONNECT with a body pipelined behind a GET is refused 400, as on a first head (red team 30)', async (t) => {
  const { held, proxy, slowTarget } = await slowAndTunnel(t, {
    policy: 'version: 1\ndefault_verdict: allow\n',
    config: 'limits: {header_timeout_ms: 5000}',
  });
  for (const framing of ['Transfer-Encoding: chunked', 'Content-Length: 5']) {
    const { client, received, closed } = openClient(proxy.port);
    client.write(keptAliveGet(slowTarget, '/slow') + `CONNECT ${slowTarget} HTTP/1.1\r\nHost: ${slowTarget}\r\n${framing}\r\n\r\n`);
    while (held.length === 0) await new Promise((r) => setTimeout(r, 10));
    (held.shift() as ServerResponse).end('first');
    await closed;
    t.match(received(), /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nfirst(HTTP\/1\.1 400 [^]*)$/, `${framing}: the GET answer, then the 400`);
    t.match(received(), /a CONNECT request has no body/, `${framing}: the refusal says why`);
  }
  t.same(
    proxy.events('egress.decision').map((e) => e.method),
    ['GET', 'GET'],
    'no CONNECT was decided',
  );
});

t.test('a client that leaves while its CONNECT waits is seen at once: the GET is aborted, the CONNECT never decided', async (t) => {
  const { held, proxy, slowTarget, tunnelUp, tunnelTarget } = await slowAndTunnel(t, { policy: 'version: 1\ndefault_verdict: allow\n' });
  // 'flood': more than EARLY_BYTES_LIMIT before the 200 (left unread, a later leaving would go unseen).
  // 'flood-head': the same, most of it read by node:http with the CONNECT head.
  for (const leave of ['end', 'reset', 'flood', 'flood-head'] as const) {
    const before = held.length;
    const client = connect({ host: '127.0.0.1', port: proxy.port });
    client.on('error', () => {});
    client.write(
      keptAliveGet(slowTarget, '/never') +
        connectRequest(tunnelTarget) +
        (leave === 'flood-head' ? 'a'.repeat(EARLY_BYTES_LIMIT - 512) : ''),
    );
    while (held.length === before) await new Promise((r) => setTimeout(r, 10));
    const upstreamClosed = new Promise<void>((resolve) => (held[before] as ServerResponse).on('close', () => resolve()));
    if (leave === 'end') client.end();
    else if (leave === 'reset') client.resetAndDestroy();
    else client.write(Buffer.alloc(leave === 'flood' ? EARLY_BYTES_LIMIT + 1024 : 1024, 0x61));
    const started = Date.now();
    await upstreamClosed;
    t.ok(Date.now() - started < 2000, `${leave}: the pending GET's upstream request is aborted at once`);
    await proxy.waitFor((e) => e.event === 'egress.closed' && e.end === 'client_closed');
    await new Promise((r) => setTimeout(r, 100));
    t.equal(proxy.events('egress.decision').filter((e) => e.port === tunnelUp.port).length, 0, `${leave}: the CONNECT is never decided`);
  }
  t.equal(proxy.running.proxy.activeCalls, 0, 'nothing left open');
});

t.test('more than EARLY_BYTES_LIMIT sent with a waiting CONNECT head closes the connection at once', async (t) => {
  const { proxy, slowTarget, tunnelUp, tunnelTarget } = await slowAndTunnel(t, { policy: 'version: 1\ndefault_verdict: allow\n' });
  const client = connect({ host: '127.0.0.1', port: proxy.port });
  client.on('error', () => {});
  const clientClosed = new Promise<boolean>((resolve) => client.on('close', () => resolve(true)));
  // One write: node:http reads the bytes after the CONNECT head with it, and nothing follows them.
  client.write(keptAliveGet(slowTarget, '/never') + connectRequest(tunnelTarget) + 'a'.repeat(EARLY_BYTES_LIMIT + 512));
  const closedInTime = await Promise.race([clientClosed, new Promise<boolean>((r) => setTimeout(() => r(false), 3000))]);
  t.ok(closedInTime, 'the connection is closed without waiting for more bytes or for the GET');
  client.destroy();
  const deadline = Date.now() + 2000;
  while (proxy.running.proxy.activeCalls > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.equal(proxy.running.proxy.activeCalls, 0, 'the GET is not left open');
  t.equal(proxy.events('egress.decision').filter((e) => e.port === tunnelUp.port).length, 0, 'the CONNECT is never decided');
});

t.test('tunnel bytes sent while the CONNECT waits reach the upstream, in order, after the head', async (t) => {
  const { held, proxy, slowTarget, tunnelTarget } = await slowAndTunnel(t, { policy: 'version: 1\ndefault_verdict: allow\n' });
  const client = connect({ host: '127.0.0.1', port: proxy.port });
  client.on('error', () => {});
  let data = '';
  client.on('data', (d: Buffer) => (data += d.toString('latin1')));
  client.write(keptAliveGet(slowTarget, '/slow') + connectRequest(tunnelTarget) + 'A');
  while (held.length === 0) await new Promise((r) => setTimeout(r, 10));
  for (const part of ['B', 'C']) {
    await new Promise((r) => setTimeout(r, 50));
    client.write(part);
  }
  await new Promise((r) => setTimeout(r, 100));
  (held[0] as ServerResponse).setHeader('content-length', '2');
  (held[0] as ServerResponse).end('ok');
  const deadline = Date.now() + 5000;
  while (!data.includes('echo:') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 100));
  t.match(data, /\r\n\r\nokHTTP\/1\.1 200 Connection Established\r\n\r\ntunnel-upstream-banner\necho:ABC$/, 'A, B and C, in order');
  client.destroy();
});

t.test('a CONNECT behind a refusal (which closes the connection) is never decided', async (t) => {
  const tunnelUp = await startTunnelUpstream();
  const proxy = await startTestProxy({
    policy: 'version: 1\ndefault_verdict: allow\nrules:\n  - {id: no-discard, priority: 1, verdict: deny, ports: [9]}\n',
  });
  t.teardown(async () => {
    await proxy.stop();
    await new Promise<void>((resolve) => tunnelUp.server.close(() => resolve()));
  });
  const tunnelTarget = `127.0.0.1:${tunnelUp.port}`;
  const r = await rawRequest(
    proxy.port,
    `GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n` + connectRequest(tunnelTarget) + 'EARLY',
  );
  t.equal(r.status, 403, 'the GET is refused, and the connection closed');
  t.notMatch(r.body, /Connection Established/, 'no tunnel after it');
  await new Promise((r) => setTimeout(r, 200));
  t.same(
    proxy.events('egress.decision').map((e) => e.method),
    ['GET'],
    'only the GET has a decision line',
  );
});

t.test('a client that half-closes with its CONNECT head: the upstream gets the bytes and the FIN', async (t) => {
  let upstreamGot = '';
  const upstreamEnded = new Promise<void>((resolve) => {
    const server = createServer((socket) => {
      socket.on('error', () => {});
      socket.on('data', (d: Buffer) => (upstreamGot += d.toString('latin1')));
      socket.on('end', () => {
        socket.end('bye');
        resolve();
      });
    });
    t.teardown(() => new Promise<void>((r) => server.close(() => r())));
    server.listen(0, '127.0.0.1', () => (port = (server.address() as AddressInfo).port));
  });
  let port = 0;
  while (port === 0) await new Promise((r) => setTimeout(r, 5));
  const proxy = await startTestProxy({ policy: 'version: 1\ndefault_verdict: allow\n' });
  t.teardown(() => proxy.stop());
  const client = connect({ host: '127.0.0.1', port: proxy.port });
  let data = '';
  client.on('data', (d: Buffer) => (data += d.toString('latin1')));
  client.end(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\nlast-words`);
  await upstreamEnded;
  t.equal(upstreamGot, 'last-words', 'the bytes after the head, then the FIN');
  await new Promise<void>((resolve) => client.on('close', () => resolve()));
  t.equal(data, 'HTTP/1.1 200 Connection Established\r\n\r\nbye', "and the upstream's answer back");
  const closed = await proxy.waitFor((e) => e.event === 'egress.closed');
  t.equal(closed.end, 'client_closed');
});

t.test('a client leaving ends every request in flight on its connection, with or without a CONNECT behind them', async (t) => {
  const { held, proxy, slowTarget, tunnelTarget } = await slowAndTunnel(t, { policy: 'version: 1\ndefault_verdict: allow\n' });
  for (const withConnect of [true, false]) {
    const before = held.length;
    const closedBefore = proxy.events('egress.closed').length;
    const { client } = openClient(proxy.port);
    const gets = [1, 2, 3].map((i) => keptAliveGet(slowTarget, `/hang${i}`)).join('');
    client.write(gets + (withConnect ? connectRequest(tunnelTarget) : ''));
    // Those admitted reach the upstream; the others wait unread and are dropped undecided.
    const inFlight = Math.min(3, PIPELINE_LIMIT);
    while (held.length < before + inFlight) await new Promise((r) => setTimeout(r, 10));
    const upstreamClosed = held.slice(before).map((res) => new Promise<void>((resolve) => res.on('close', () => resolve())));
    client.end();
    await Promise.all(upstreamClosed);
    t.pass(`${withConnect ? 'with' : 'without'} a CONNECT: every upstream request in flight aborted`);
    const closed = await proxy.waitForCount('egress.closed', closedBefore + inFlight);
    t.same(
      closed.slice(closedBefore).map((e) => e.end),
      Array(inFlight).fill('client_closed'),
      'each has its closed event',
    );
    t.equal(proxy.running.proxy.activeCalls, 0, 'nothing left open');
  }
});
