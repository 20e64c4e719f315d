/**
 * A proxy under benchmark, in its own process: `egress` (mcp-egress-proxy with a default-allow
 * policy, events written synchronously to a file), `egress-redis` (the same with `state.store:
 * redis` on BENCH_REDIS_URL), `egress-events` (the same with its admin API on, for a GET /v1/events
 * reader) or `proxy-chain` (a bare proxy-chain Server).
 * Reports its port over IPC; exits on SIGTERM.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, createServer, request } from 'node:http';
import { connect } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import pino from 'pino';
import { Server } from 'proxy-chain';
import { startProxy } from '../src/commands/serve.js';
import { parseProxyConfig } from '../src/config/proxy-config.js';
import { BatchedDestination } from '../src/events/event-destination.js';
import { createEventSink, createLogger } from '../src/events/events.js';

const kind = process.argv[2];
const send = (port: number) => process.send?.({ port });
// S5 measures retained memory: the bench asks for a full GC before each RSS reading.
process.on('message', (m) => {
  if (m === 'gc') {
    (globalThis as { gc?: () => void }).gc?.();
    process.send?.({ gc: 'done', mem: process.memoryUsage() });
  }
});

if (kind === 'minimal') {
  // The reference point of the issue: a minimal node:http forwarder (no policy, no events).
  const agent = new Agent({ keepAlive: true });
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/');
    const upstream = request(
      { host: url.hostname, port: url.port, path: url.pathname + url.search, method: req.method, headers: req.headers, agent },
      (upstreamRes) => {
        res.writeHead(upstreamRes.statusCode ?? 502, upstreamRes.headers);
        upstreamRes.pipe(res);
      },
    );
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  server.on('connect', (req, client: Socket, head: Buffer) => {
    const [host, port] = (req.url ?? '').split(':');
    const upstream = connect({ host, port: Number(port) }, () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
  });
  server.listen(0, '127.0.0.1', () => send((server.address() as AddressInfo).port));
  process.on('SIGTERM', () => process.exit(0));
} else if (kind === 'proxy-chain') {
  const server = new Server({ port: 0, host: '127.0.0.1', verbose: false });
  await server.listen();
  send(server.port);
  process.on('SIGTERM', () => void server.close(true).then(() => process.exit(0)));
} else {
  // `egress-events`: the same proxy with its admin API on, for a GET /v1/events reader (a console tab).
  const withAdmin = kind === 'egress-events';
  const dir = mkdtempSync(join(tmpdir(), 'mep-bench-'));
  writeFileSync(
    join(dir, 'policy.yaml'),
    'version: 1\ndefault_verdict: allow\nrules:\n  - {id: audit-bench, priority: 1, verdict: allow, tool_name_glob: bench}\n',
  );
  // egress-redis: the same proxy with its state in Redis (BENCH_REDIS_URL, started by the bench).
  const state = kind === 'egress-redis' ? `state: {store: redis, redis_url: "${process.env.BENCH_REDIS_URL ?? ''}"}\n` : '';
  const text = `listen: 127.0.0.1:0\npolicy: policy.yaml\nadmin: {listen: ${withAdmin ? '127.0.0.1:0' : '"off"'}}\nbaseline: {allow_cidrs: [127.0.0.0/8]}\nlimits: {max_tunnels_per_client: 100000, max_connections: 100000}\n${state}`;
  const parsed = parseProxyConfig(join(dir, 'proxy.yaml'), text);
  if (!parsed.config) throw new Error('bench config invalid');
  const events = createEventSink(
    createLogger(
      'info',
      new BatchedDestination(pino.destination({ dest: join(mkdtempSync(join(tmpdir(), 'mep-bench-log-')), 'events.log'), sync: true })),
    ),
  );
  const running = await startProxy(parsed.config, events);
  if (!running) throw new Error('bench policy invalid');
  while (!running.state.up) await new Promise((r) => setTimeout(r, 10));
  const admin = running.admin?.server.address() as AddressInfo | undefined;
  process.send?.({ port: running.proxy.address?.port as number, admin: admin?.port ?? null });
  process.on('SIGTERM', () => void running.stop().then(() => process.exit(0)));
}
