/** Clients that misbehave get a clear answer or are cut off, and the proxy keeps serving others. */
import { connect } from 'node:net';
import t from 'tap';
import { startTestProxy } from '../helpers/proxy.js';
import { connectRequest, getRequest, rawRequest } from '../helpers/raw.js';
import { startUpstream } from '../helpers/upstream.js';

t.test('hostile clients', async (t) => {
  const upstream = await startUpstream();
  const proxy = await startTestProxy({
    policy: 'version: 1\ndefault_verdict: allow\n',
    config: 'limits: {header_timeout_ms: 600, max_tunnels_per_client: 2, tunnel_idle_timeout_ms: 400}',
  });
  t.teardown(async () => {
    await proxy.stop();
    await upstream.close();
  });
  const healthy = async () =>
    (await rawRequest(proxy.port, getRequest(`http://127.0.0.1:${upstream.port}/ok`, `127.0.0.1:${upstream.port}`))).status;

  const badRequests: Array<[string, string, number, string]> = [
    ['garbage', 'GARBAGE GARBAGE\r\n\r\n', 400, 'bad_request'],
    ['binary', '\u0016\u0003\u0001\u0002\u0000\u0001\u0000\u0001\u00fc\u0003\u0003', 400, 'bad_request'],
    ['origin-form request to the proxy', 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n', 400, 'bad_request'],
    ['https in absolute form', 'GET https://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n', 400, 'bad_request'],
    ['CONNECT without a port', connectRequest('a.test'), 400, 'bad_request'],
    ['CONNECT with a path', connectRequest('a.test:443/x'), 400, 'bad_request'],
    ['CONNECT to port 0', connectRequest('a.test:0'), 400, 'bad_request'],
    ['CONNECT to port 70000', connectRequest('a.test:70000'), 400, 'bad_request'],
    ['zone id', connectRequest('[fe80::1%25lo]:80'), 400, 'bad_request'],
    ['percent in host', getRequest('http://a%2e.test/', 'a%2e.test'), 400, 'bad_request'],
    // Red-team F2: `%` anywhere in the authority is refused, never decoded and judged.
    ['percent-encoded trailing dot', 'GET http://evil.test%2e/ HTTP/1.1\r\nConnection: close\r\n\r\n', 400, 'bad_request'],
    ['percent-encoded letter', 'GET http://ev%69l.test/ HTTP/1.1\r\nConnection: close\r\n\r\n', 400, 'bad_request'],
    ['percent in the port', 'GET http://a.test:8%30/ HTTP/1.1\r\nConnection: close\r\n\r\n', 400, 'bad_request'],
    ['percent in the Host header only', getRequest('http://evil.test./', 'evil.test%2e'), 400, 'bad_request'],
    ['percent in a CONNECT authority', connectRequest('evil.test%2e:443'), 400, 'bad_request'],
    ['userinfo', getRequest('http://user@a.test/', 'a.test'), 400, 'bad_request'],
    ['over-long name', connectRequest(`${'a'.repeat(250)}.test:443`), 400, 'bad_request'],
    ['empty label', connectRequest('a..test:443'), 400, 'bad_request'],
    ['Host names another authority', getRequest(`http://127.0.0.1:${upstream.port}/`, 'evil.test'), 400, 'bad_request'],
    ['Host names another port', getRequest(`http://127.0.0.1:${upstream.port}/`, '127.0.0.1:1'), 400, 'bad_request'],
    [
      'duplicate tool header',
      getRequest(`http://127.0.0.1:${upstream.port}/`, `127.0.0.1:${upstream.port}`, 'x-mcp-tool: a\r\nx-mcp-tool: b\r\n'),
      400,
      'bad_request',
    ],
    [
      '100 KB header',
      `GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nx-big: ${'x'.repeat(100 * 1024)}\r\n\r\n`,
      431,
      'request_header_too_large',
    ],
  ];
  for (const [name, request, status, code] of badRequests) {
    const r = await rawRequest(proxy.port, request);
    t.equal(r.status, status, name);
    t.equal(JSON.parse(r.body || '{}').error?.code, code, `${name}: ${code}`);
    t.equal(r.headers['content-type'], 'application/json');
    t.ok(r.closedByPeer, `${name}: connection closed`);
  }
  t.equal(await healthy(), 200, 'still serving');

  t.test('Host with the default port written or omitted is the same authority', async (t) => {
    const r = await rawRequest(proxy.port, `GET http://localhost/ HTTP/1.1\r\nHost: LOCALHOST:80\r\nConnection: close\r\n\r\n`);
    // Past the Host check and on to resolving the name (the test proxy has no DNS server).
    t.equal(r.status, 502);
    t.equal(JSON.parse(r.body).error.code, 'dns_error');
  });

  t.test('a client that sends nothing is cut off, others are served meanwhile', async (t) => {
    const started = Date.now();
    const silent = connect({ host: '127.0.0.1', port: proxy.port });
    let answer = '';
    silent.on('data', (d) => (answer += d.toString()));
    t.equal(await healthy(), 200, 'served while the silent client waits');
    await new Promise((resolve) => silent.on('close', resolve));
    const waited = Date.now() - started;
    t.ok(waited < 5000, `cut off after ${waited} ms (header timeout 600 ms)`);
    t.match(answer, /^HTTP\/1\.1 408/);
  });

  t.test('a client that trickles its headers is cut off too', async (t) => {
    const slow = connect({ host: '127.0.0.1', port: proxy.port });
    let answer = '';
    slow.on('data', (d) => (answer += d.toString()));
    slow.write('GET http://a.test/ HTTP/1.1\r\n');
    const timer = setInterval(() => slow.writable && slow.write('x-a: b\r\n'), 100);
    await new Promise((resolve) => slow.on('close', resolve));
    clearInterval(timer);
    t.match(answer, /^HTTP\/1\.1 408/, 'the header timeout counts from the first byte, not the last');
  });

  t.test('tunnels per client are limited, and idle tunnels closed', async (t) => {
    const open = () =>
      new Promise<ReturnType<typeof connect>>((resolve) => {
        const s = connect({ host: '127.0.0.1', port: proxy.port });
        s.once('data', () => resolve(s));
        s.write(connectRequest(`127.0.0.1:${upstream.port}`));
      });
    const first = await open();
    const second = await open();
    const third = await rawRequest(proxy.port, connectRequest(`127.0.0.1:${upstream.port}`));
    t.equal(third.status, 429);
    t.equal(JSON.parse(third.body).error.code, 'too_many_tunnels');
    await Promise.all([first, second].map((s) => new Promise((resolve) => s.on('close', resolve))));
    const idleClosed = () => proxy.events('egress.closed').filter((e) => e.end === 'idle_timeout').length;
    for (let i = 0; i < 100 && idleClosed() < 2; i++) await new Promise((r) => setTimeout(r, 20));
    t.equal(idleClosed(), 2, 'both idle tunnels closed by the idle timeout');
    const again = await rawRequest(proxy.port, connectRequest(`127.0.0.1:${upstream.port}`), 200);
    t.match(again.raw, /^HTTP\/1\.1 200/, 'closed tunnels no longer count');
  });

  t.test('an upstream that never answers gets upstream_timeout', async (t) => {
    const hang = await startUpstream('127.0.0.1', { respond: () => {} });
    const r = await rawRequest(proxy.port, getRequest(`http://127.0.0.1:${hang.port}/`, `127.0.0.1:${hang.port}`));
    t.equal(r.status, 504);
    t.equal(JSON.parse(r.body).error.code, 'upstream_timeout');
    await hang.close();
  });
});

t.test('too many connections get 503 overloaded', async (t) => {
  const proxy = await startTestProxy({ policy: 'version: 1\n', config: 'limits: {max_connections: 1}' });
  t.teardown(() => proxy.stop());
  const holder = connect({ host: '127.0.0.1', port: proxy.port });
  await new Promise((resolve) => holder.on('connect', resolve));
  const r = await rawRequest(proxy.port, connectRequest('a.test:443'));
  t.equal(r.status, 503);
  t.equal(JSON.parse(r.body).error.code, 'overloaded');
  holder.destroy();
});
