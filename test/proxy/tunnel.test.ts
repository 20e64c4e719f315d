/**
 * The CONNECT relay (src/proxy/tunnel.ts) through the real proxy, loopback only: half-closes
 * travel both ways, a slow reader pauses the other side instead of filling the proxy's memory,
 * bytes are counted per tunnel, and each end reason is reported once.
 */
import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import t from 'tap';
import { startTestProxyFor } from '../helpers/proxy.js';
import { openTunnel } from '../helpers/raw.js';
import type { TestProxy } from '../helpers/proxy.js';

const POLICY = 'version: 1\ndefault_verdict: allow\nrules: []\n';

const proxyFor = (t: { teardown(fn: () => unknown): void }, config?: string): Promise<TestProxy> =>
  startTestProxyFor(t, { policy: POLICY, config });

async function listen(t: { teardown(fn: () => unknown): void }, onSocket: (s: Socket) => void): Promise<number> {
  const server = createServer(onSocket);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  return (server.address() as AddressInfo).port;
}

t.test('half-closes travel both ways: the client ends, the upstream still answers', async (t) => {
  const proxy = await proxyFor(t);
  const port = await listen(t, (s) => {
    let got = '';
    s.on('data', (d) => (got += d.toString()));
    // Answers only after the client has finished sending: needs the client's FIN to arrive.
    s.on('end', () => s.end(`received ${got.length} bytes`));
  });
  const { socket } = await openTunnel(proxy.port, port);
  socket.end('x'.repeat(5000));
  let answer = '';
  socket.on('data', (d) => (answer += d.toString()));
  await once(socket, 'close');
  t.equal(answer, 'received 5000 bytes');
  const closed = await proxy.waitFor((e) => e.event === 'egress.closed');
  t.equal(closed.bytes_up, 5000);
  t.equal(closed.bytes_down, 'received 5000 bytes'.length);
  t.equal(closed.end, 'client_closed', 'the client ended first');
});

t.test('a reader that stops reading pauses the upstream: the proxy does not buffer the stream', async (t) => {
  const proxy = await proxyFor(t);
  let upstreamBlocked: () => void;
  const blocked = new Promise<void>((r) => (upstreamBlocked = r));
  let written = 0;
  const chunk = Buffer.alloc(64 * 1024, 1);
  const port = await listen(t, (s) => {
    s.on('error', () => {});
    const pump = () => {
      while (written < 512 * 1024 * 1024) {
        written += chunk.length;
        if (!s.write(chunk)) {
          upstreamBlocked();
          return void s.once('drain', pump);
        }
      }
    };
    pump();
  });
  const { socket } = await openTunnel(proxy.port, port);
  socket.pause();
  await blocked;
  await new Promise((r) => setTimeout(r, 300));
  const stalledAt = written;
  await new Promise((r) => setTimeout(r, 300));
  t.equal(written, stalledAt, 'the upstream stays blocked while the client does not read');
  t.ok(written < 64 * 1024 * 1024, `only socket buffers are in flight (${(written / 1024 / 1024).toFixed(1)} MiB written)`);
  // Reading again resumes the flow.
  let read = 0;
  socket.on('data', (d: Buffer) => (read += d.length));
  socket.resume();
  await new Promise((r) => setTimeout(r, 300));
  t.ok(written > stalledAt && read > 0, 'the stream resumes when the client reads');
  socket.destroy();
  const closed = await proxy.waitFor((e) => e.event === 'egress.closed');
  t.equal(closed.end, 'client_closed');
});

t.test('the upstream ends first: upstream_closed, and the client sees its FIN', async (t) => {
  const proxy = await proxyFor(t);
  const port = await listen(t, (s) => s.end('bye'));
  const { socket, rest } = await openTunnel(proxy.port, port);
  let data = rest.toString();
  socket.on('data', (d) => (data += d.toString()));
  await once(socket, 'end');
  t.equal(data, 'bye');
  socket.end();
  const closed = await proxy.waitFor((e) => e.event === 'egress.closed');
  t.equal(closed.end, 'upstream_closed');
  t.equal(closed.bytes_down, 3);
});

t.test('an idle tunnel is closed after the idle timeout, whichever side is quiet', async (t) => {
  const proxy = await proxyFor(t, 'limits: {tunnel_idle_timeout_ms: 1000}');
  const port = await listen(t, (s) => {
    // Talks every 200 ms for 1.2 s (longer than the idle timeout), then falls silent.
    let n = 0;
    const timer = setInterval(() => (++n <= 6 ? s.write('.') : clearInterval(timer)), 200);
    s.on('close', () => clearInterval(timer));
    s.on('error', () => {});
  });
  const { socket } = await openTunnel(proxy.port, port);
  let dots = 0;
  socket.on('data', (d: Buffer) => (dots += d.length));
  await once(socket, 'close');
  t.equal(dots, 6, 'traffic from the upstream alone kept the tunnel open past the idle timeout');
  const closed = await proxy.waitFor((e) => e.event === 'egress.closed');
  t.equal(closed.end, 'idle_timeout');
  t.equal(proxy.running.proxy.activeCalls, 0);
});

t.test('an ended tunnel leaves nothing of itself on its sockets (they outlive it until a full GC)', async (t) => {
  const { Tunnel } = await import('../../src/proxy/tunnel.js');
  /** A connected loopback pair: [the end we hand the tunnel, the far end]. */
  const pair = async (): Promise<[Socket, Socket]> => {
    let far: Socket | undefined;
    const port = await listen(t, (s) => (far = s));
    const near = connect({ host: '127.0.0.1', port });
    await once(near, 'connect');
    while (far === undefined) await new Promise((r) => setImmediate(r));
    return [near, far];
  };
  const [client, clientFar] = await pair();
  const [upstream, upstreamFar] = await pair();
  let ended: unknown = null;
  const tunnel = new Tunnel('c-1', 'k', client, upstream, 0, { tunnelEnded: (x) => (ended = x) });
  t.ok(tunnel.open(Buffer.alloc(0)));
  const holders = (s: Socket) => Object.getOwnPropertySymbols(s).filter((sym) => (s as unknown as Record<symbol, unknown>)[sym] === tunnel);
  t.equal(holders(client).length, 1, 'while open, the socket points at its tunnel');
  clientFar.destroy();
  upstreamFar.on('error', () => {});
  while (ended === null) await new Promise((r) => setTimeout(r, 5));
  t.equal(ended, tunnel);
  t.same(holders(client), [], 'client socket');
  t.same(holders(upstream), [], 'upstream socket');
});

t.test('a side that ended cleanly lets what it sent go out before the other closes; a reset does not wait', async (t) => {
  const { Tunnel } = await import('../../src/proxy/tunnel.js');
  const { EventEmitter } = await import('node:events');
  /** Stands in for a socket: what the tunnel reads of it, and what it calls. */
  class StandIn extends EventEmitter {
    readableEnded = false;
    writableLength = 0;
    destroyed = false;
    calls: string[] = [];
    private onFinished: (() => void) | null = null;
    end(cb?: () => void): void {
      this.calls.push('end');
      this.onFinished = cb ?? null;
    }
    destroy(): void {
      this.calls.push('destroy');
      this.destroyed = true;
    }
    /** The queued bytes are out and the FIN sent. */
    finished(): void {
      this.writableLength = 0;
      this.onFinished?.();
    }
  }
  const tunnelOf = (client: StandIn, upstream: StandIn) =>
    new Tunnel('c-1', 'k', client as unknown as Socket, upstream as unknown as Socket, 0, { tunnelEnded: () => {} });

  const client = new StandIn();
  const upstream = new StandIn();
  const tunnel = tunnelOf(client, upstream);
  upstream.readableEnded = true; // its FIN came (and was passed on)
  client.writableLength = 10_032; // bytes of it still queued for the client
  tunnel.socketClosed(upstream as unknown as Socket);
  t.same(client.calls, ['end'], 'the client is not destroyed while the last bytes of the upstream wait');
  client.finished();
  t.same(client.calls, ['end', 'destroy'], 'closed once they are out');
  t.equal(tunnel.end, 'upstream_closed');

  const resetClient = new StandIn();
  const resetUpstream = new StandIn();
  resetClient.writableLength = 10_032;
  tunnelOf(resetClient, resetUpstream).socketClosed(resetUpstream as unknown as Socket);
  t.same(resetClient.calls, ['destroy'], 'an upstream that did not end cleanly: the client closes at once');

  const idleClient = new StandIn();
  const endedUpstream = new StandIn();
  endedUpstream.readableEnded = true;
  tunnelOf(idleClient, endedUpstream).socketClosed(endedUpstream as unknown as Socket);
  t.same(idleClient.calls, ['destroy'], 'nothing queued: at once, as before');
});
