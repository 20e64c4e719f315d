/**
 * GET /v1/events against the real proxy: SSE with real traffic, a stream that starts full, the
 * filters, strict query validation, roles, the stream cap, and a client that never reads: the
 * proxy keeps deciding, what waits for that client stays bounded, and the drops are counted.
 */
import { Agent, request } from 'node:http';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import t from 'tap';
import { adminApi, adminPort, ADMIN_WITH_TOKENS, DEVELOPER_TOKEN, VIEWER_TOKEN } from '../helpers/admin.js';
import { startTestProxyFor } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { getRequest, rawRequest } from '../helpers/raw.js';
import { startUpstream } from '../helpers/upstream.js';

const POLICY = `version: 1
default_verdict: deny
rules:
  - {id: allow-fetch, priority: 10, verdict: allow, tool_name_glob: fetch, egress: {allow: [127.0.0.1]}}
  - {id: deny-bad, priority: 5, verdict: deny, egress: {deny: [bad.example]}}
`;

interface Sse {
  frames: Array<{ id: number | null; event: string; data: string }>;
  comments: string[];
  socket: Socket;
  status: number;
  waitFor(pred: (f: { event: string; data: string }) => boolean, ms?: number): Promise<void>;
}

/** Opens a stream on a raw socket and parses its frames (chunked transfer encoding removed). */
async function openStream(proxy: TestProxy, query: string, token = VIEWER_TOKEN): Promise<Sse> {
  const port = adminPort(proxy);
  const socket = connect({ host: '127.0.0.1', port });
  socket.write(`GET /v1/events${query} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${token}\r\n\r\n`);
  const sse: Sse = {
    frames: [],
    comments: [],
    socket,
    status: 0,
    async waitFor(pred, ms = 3000) {
      const deadline = Date.now() + ms;
      while (!sse.frames.some(pred)) {
        if (Date.now() > deadline) throw new Error(`timed out; frames: ${JSON.stringify(sse.frames.map((f) => f.data.slice(0, 120)))}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
  };
  let raw = '';
  let body = '';
  let headDone = false;
  socket.on('data', (d: Buffer) => {
    raw += d.toString('utf8');
    if (!headDone) {
      const end = raw.indexOf('\r\n\r\n');
      if (end === -1) return;
      sse.status = Number(raw.slice(9, 12));
      raw = raw.slice(end + 4);
      headDone = true;
    }
    // Chunked: size line, data, CRLF.
    for (;;) {
      const nl = raw.indexOf('\r\n');
      if (nl === -1) break;
      const size = parseInt(raw.slice(0, nl), 16);
      if (raw.length < nl + 2 + size + 2) break;
      body += raw.slice(nl + 2, nl + 2 + size);
      raw = raw.slice(nl + 2 + size + 2);
    }
    let sep;
    while ((sep = body.indexOf('\n\n')) !== -1) {
      const block = body.slice(0, sep);
      body = body.slice(sep + 2);
      const frame = { id: null as number | null, event: 'message', data: '' };
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) sse.comments.push(line);
        else if (line.startsWith('id: ')) frame.id = Number(line.slice(4));
        else if (line.startsWith('event: ')) frame.event = line.slice(7);
        else if (line.startsWith('data: ')) frame.data += line.slice(6);
      }
      if (frame.data) sse.frames.push(frame);
    }
  });
  const deadline = Date.now() + 3000;
  while (sse.status === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  return sse;
}

const decisions = (s: Sse) => s.frames.filter((f) => f.event === 'decision').map((f) => JSON.parse(f.data) as Record<string, unknown>);

async function setup(t: { teardown(fn: () => unknown): void }) {
  const upstream = await startUpstream();
  t.teardown(() => upstream.close());
  const proxy = await startTestProxyFor(t, { policy: POLICY, config: ADMIN_WITH_TOKENS });
  const call = (tool: string, host = `127.0.0.1:${upstream.port}`) =>
    rawRequest(proxy.port, getRequest(`http://${host}/`, host, `x-mcp-tool: ${tool}\r\n`));
  return { proxy, upstream, call };
}

t.test('a stream starts with the recorded decisions, then shows each new one within a second, as the log line', async (t) => {
  const { proxy, call } = await setup(t);
  t.equal((await call('fetch')).status, 200);
  t.equal((await call('search')).status, 403);
  const s = await openStream(proxy, '');
  t.teardown(() => s.socket.destroy());
  t.equal(s.status, 200);
  await s.waitFor(() => decisions(s).length >= 2);
  t.same(
    decisions(s).map((d) => [d.tool, d.verdict, d.dispatched]),
    [
      ['fetch', 'allow', true],
      ['search', 'deny', false],
    ],
  );
  const started = Date.now();
  t.equal((await call('fetch', 'bad.example:80')).status, 403);
  await s.waitFor((f) => f.data.includes('"host":"bad.example"'), 1000);
  t.ok(Date.now() - started < 1000, 'within a second');
  const shown = decisions(s).at(-1) as Record<string, unknown>;
  t.match(shown, { event: 'egress.decision', verdict: 'deny', rule: { id: 'deny-bad' }, host: 'bad.example' });
  const logged = proxy.events('egress.decision').find((e) => e.conn_id === shown.conn_id);
  t.same(shown, logged, 'the same line the log got');
  t.ok(
    s.frames.every((f) => f.event !== 'decision' || typeof f.id === 'number'),
    'each frame has an id (Last-Event-ID resumes)',
  );
});

t.test('filters: verdict, tool, server, host; all must match', async (t) => {
  const { proxy, call, upstream } = await setup(t);
  await call('fetch');
  await call('search');
  await call('fetch', 'BAD.example.:80');
  const byVerdict = await openStream(proxy, '?verdict=deny');
  const byTool = await openStream(proxy, '?tool=fetch');
  const byHost = await openStream(proxy, '?host=Bad.Example.');
  const both = await openStream(proxy, '?verdict=allow,audit&tool=fetch&server=127.0.0.1');
  const none = await openStream(proxy, '?server=10.9.9.9');
  t.teardown(() => [byVerdict, byTool, byHost, both, none].forEach((s) => s.socket.destroy()));
  await new Promise((r) => setTimeout(r, 200));
  t.same(
    decisions(byVerdict).map((d) => d.tool),
    ['search', 'fetch'],
  );
  t.same(
    decisions(byTool).map((d) => d.host),
    ['127.0.0.1', 'bad.example'],
  );
  t.same(
    decisions(byHost).map((d) => d.verdict),
    ['deny'],
  );
  t.same(
    decisions(both).map((d) => `${String(d.host)}:${String(d.port)}`),
    [`127.0.0.1:${upstream.port}`],
  );
  t.same(decisions(none), []);
});

t.test('strict query and roles', async (t) => {
  const { proxy } = await setup(t);
  for (const q of ['?verdict=maybe', '?verdict=', '?tool=', '?host=a%20b', '?nope=1', '?tool=a&tool=b', '?verdict=deny,,allow']) {
    const res = await adminApi(proxy, 'GET', `/v1/events${q}`, { token: VIEWER_TOKEN });
    t.equal(res.status, 400, q);
    t.equal(res.json.error.code, 'bad_request');
  }
  t.equal((await adminApi(proxy, 'GET', '/v1/events')).status, 401, 'no token');
  t.equal((await adminApi(proxy, 'POST', '/v1/events', { token: DEVELOPER_TOKEN, body: {} })).status, 405);
});

t.test('the number of streams is capped: 503 beyond it, a slot frees when one closes', async (t) => {
  const { proxy } = await setup(t);
  const limit = proxy.running.feed.limit;
  const streams = await Promise.all(Array.from({ length: limit }, () => openStream(proxy, '')));
  t.teardown(() => streams.forEach((s) => s.socket.destroy()));
  t.ok(streams.every((s) => s.status === 200));
  const refused = await adminApi(proxy, 'GET', '/v1/events', { token: VIEWER_TOKEN });
  t.equal(refused.status, 503);
  t.equal(refused.json.error.code, 'too_many_streams');
  (streams.pop() as Sse).socket.destroy();
  const deadline = Date.now() + 2000;
  while (proxy.running.feed.subscriberCount >= limit && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  const again = await openStream(proxy, '');
  t.equal(again.status, 200);
  again.socket.destroy();
});

t.test('a client that never reads: the proxy keeps deciding, its backlog stays bounded, drops are counted', async (t) => {
  const { proxy } = await setup(t);
  const port = adminPort(proxy);
  // Sends the request, then never reads: its socket buffers fill and stay full.
  const stalled = connect({ host: '127.0.0.1', port });
  stalled.write(`GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${VIEWER_TOKEN}\r\n\r\n`);
  stalled.pause();
  t.teardown(() => stalled.destroy());
  const deadline = Date.now() + 2000;
  while (proxy.running.feed.subscriberCount === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));

  // Refusals by name (no DNS) as fast as 16 keep-alive connections allow.
  const agent = new Agent({ keepAlive: true, maxSockets: 16 });
  t.teardown(() => agent.destroy());
  const one = () =>
    new Promise<number>((resolve, reject) => {
      const req = request(
        { host: '127.0.0.1', port: proxy.port, path: 'http://refused.example/', headers: { host: 'refused.example' }, agent },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('error', reject);
      req.end();
    });
  const total = 12_000;
  let done = 0;
  let most = 0;
  const started = Date.now();
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (done < total) {
        done++;
        if ((await one()) !== 403) throw new Error('expected a refusal');
        if (done % 500 === 0) most = Math.max(most, proxy.running.feed.maxBacklog());
      }
    }),
  );
  const seconds = (Date.now() - started) / 1000;
  t.comment(`${total} decisions in ${seconds.toFixed(1)} s with a stalled stream; most waiting for it: ${most} bytes`);
  await new Promise((r) => setTimeout(r, 200));
  most = Math.max(most, proxy.running.feed.maxBacklog());
  const budget = 1024 * 1024;
  // One batch is at most 1,000 decision frames of well under 1 KiB each.
  t.ok(most <= budget + 1_000_000, `the stalled stream's backlog (${most}) stays within the budget and one batch`);
  t.ok(proxy.running.feed.droppedTotal > 0, `decisions dropped for it: ${proxy.running.feed.droppedTotal}`);
  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const m = /^egress_events_dropped_total (\d+)$/m.exec(metrics);
  t.ok(m && Number(m[1]) === proxy.running.feed.droppedTotal, 'the drops are the metric');
  t.match(metrics, /^egress_events_streams 1$/m);
  t.equal(proxy.events('egress.decision').length, total, 'every decision logged');
});
