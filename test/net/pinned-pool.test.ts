import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import t from 'tap';
import { canonicalHost } from '../../src/net/address.js';
import type { IpAddress } from '../../src/net/address.js';
import { DialError } from '../../src/net/pinned-dial.js';
import { PinnedPool } from '../../src/net/pinned-pool.js';
import type { PinnedPoolOptions, UpstreamConnection } from '../../src/net/pinned-pool.js';

// Loopback only: 127.0.0.1 has a server, 127.0.0.2 and 127.0.0.3 stand for other vetted or unvetted addresses.
const ip = (text: string): IpAddress => {
  const h = canonicalHost(text);
  if (h.kind !== 'ip') throw new Error(text);
  return h.ip;
};

interface Upstream {
  server: Server;
  port: number;
  connections: Socket[];
}

async function upstream(host = '127.0.0.1'): Promise<Upstream> {
  const connections: Socket[] = [];
  let n = 0;
  const server = createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
    const close = req.url === '/close';
    res.writeHead(200, { 'content-length': '2', ...(close ? { connection: 'close' } : {}) });
    res.end(String(++n % 10) + 'k');
  });
  server.on('connection', (s: Socket) => connections.push(s));
  await new Promise<void>((r) => server.listen(0, host, () => r()));
  return { server, port: (server.address() as AddressInfo).port, connections };
}

/** Sends one GET on `conn` and resolves with the status when the response is complete. */
function get(conn: UpstreamConnection, path = '/'): Promise<number> {
  return new Promise((resolve, reject) => {
    let status = 0;
    conn.client.dispatch(
      { path, method: 'GET', headers: ['host', 'example.test'] },
      {
        onConnect: () => {},
        onHeaders: (s) => ((status = s), true),
        onData: () => true,
        onComplete: () => resolve(status),
        onError: reject,
      },
    );
  });
}

/** An upstream and a pool, both closed when the test ends. */
async function setup(t: { teardown(fn: () => unknown): void }, options?: PinnedPoolOptions): Promise<{ up: Upstream; pool: PinnedPool }> {
  const up = await upstream();
  const pool = new PinnedPool(options);
  t.teardown(() => {
    pool.destroy();
    up.server.close();
  });
  return { up, pool };
}

t.test('an idle connection serves only a call that vetted its address', async (t) => {
  const { up, pool } = await setup(t);
  const conn = await pool.dial([ip('127.0.0.1')], up.port, 1000);
  t.equal(conn.address.text, '127.0.0.1');
  t.equal(await get(conn), 200);
  pool.release(conn);
  t.equal(pool.takeIdle([ip('127.0.0.2')], up.port), null, 'another address: not taken');
  t.equal(pool.takeIdle([ip('127.0.0.1')], up.port + 1 === 65536 ? 1 : up.port + 1), null, 'another port: not taken');
  const again = pool.takeIdle([ip('127.0.0.2'), ip('127.0.0.1')], up.port);
  t.equal(again, conn, 'taken by a call whose candidates include the address');
  t.equal(again?.uses, 1);
  t.equal(await get(conn), 200);
  t.equal(up.connections.length, 1, 'both requests on one upstream connection');
  t.equal(pool.takeIdle([ip('127.0.0.1')], up.port), null, 'a connection in use is not idle');
});

t.test('a dial falls back to the next candidate and is filed under the address it reached', async (t) => {
  const { up, pool } = await setup(t);
  // 127.0.0.3: nothing listens on this port there, so the connection is refused.
  const conn = await pool.dial([ip('127.0.0.3'), ip('127.0.0.1')], up.port, 1000);
  t.equal(conn.address.text, '127.0.0.1');
  t.equal(await get(conn), 200);
  pool.release(conn);
  t.equal(pool.takeIdle([ip('127.0.0.3')], up.port), null, 'not under the first candidate');
  t.equal(pool.takeIdle([ip('127.0.0.1')], up.port), conn);
  await t.rejects(pool.dial([ip('127.0.0.3')], up.port, 1000), DialError);
});

t.test('connections the upstream closes, or asks to close, are never reused', async (t) => {
  const { up, pool } = await setup(t);
  const conn = await pool.dial([ip('127.0.0.1')], up.port, 1000);
  t.equal(await get(conn, '/close'), 200);
  pool.release(conn);
  t.equal(pool.takeIdle([ip('127.0.0.1')], up.port), null, 'Connection: close is honoured');

  const other = await pool.dial([ip('127.0.0.1')], up.port, 1000);
  t.equal(await get(other), 200);
  pool.release(other);
  const closed = new Promise((r) => other.socket.once('close', r));
  (up.connections.at(-1) as Socket).destroy();
  await closed;
  t.equal(pool.takeIdle([ip('127.0.0.1')], up.port), null, 'closed while idle: dropped');
  t.equal(pool.size, 0);
});

t.test('a Client never dials on its own: after its socket closes, a request fails instead', async (t) => {
  const { up, pool } = await setup(t);
  const conn = await pool.dial([ip('127.0.0.1')], up.port, 1000);
  t.equal(await get(conn), 200);
  const closed = new Promise((r) => conn.socket.once('close', r));
  conn.socket.destroy();
  await closed;
  await t.rejects(get(conn), 'no second connection is opened');
  t.equal(up.connections.length, 1);
});

t.test('idle connections expire after the keep-alive time', async (t) => {
  const { up, pool } = await setup(t, { keepAliveMs: 1000 });
  const conn = await pool.dial([ip('127.0.0.1')], up.port, 1000);
  t.equal(await get(conn), 200);
  pool.release(conn);
  await new Promise((r) => conn.socket.once('close', r));
  t.equal(pool.takeIdle([ip('127.0.0.1')], up.port), null);
  t.equal(pool.size, 0);
});

t.test('at most maxIdlePerAddress idle connections are kept; discard and destroy close sockets', async (t) => {
  const up = await upstream();
  const pool = new PinnedPool({ maxIdlePerAddress: 1 });
  t.teardown(() => up.server.close());
  const a = await pool.dial([ip('127.0.0.1')], up.port, 1000);
  const b = await pool.dial([ip('127.0.0.1')], up.port, 1000);
  await Promise.all([get(a), get(b)]);
  pool.release(a);
  pool.release(b);
  t.ok(b.socket.destroyed, 'the second idle one is closed');
  const c = await pool.dial([ip('127.0.0.1')], up.port, 1000);
  pool.discard(c);
  t.ok(c.socket.destroyed);
  pool.destroy();
  t.ok(a.socket.destroyed);
});

t.test('a connection pooled before any request survives a reset from the upstream', async (t) => {
  const { up, pool } = await setup(t);
  const conn = await pool.dial([ip('127.0.0.1')], up.port, 1000);
  pool.release(conn); // the client left while we dialled: pooled, never used
  const closed = new Promise((r) => conn.socket.once('close', r));
  (up.connections.at(-1) as Socket).resetAndDestroy();
  await closed;
  t.equal(pool.takeIdle([ip('127.0.0.1')], up.port), null, 'dropped, and no uncaught error');
  t.equal(pool.size, 0);
});
