/**
 * Accepted sockets built with full options (src/net/accept.ts): they behave as Node's own
 * (counted, owned by their server, no-delay as the server says, closed servers drain), the cases
 * it does not take over still reach Node's function, and accepting builds no hidden classes per
 * socket. Loopback only.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { createServer as createHttpServer } from 'node:http';
import { Socket, createServer } from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import v8 from 'node:v8';
import t from 'tap';
import { acceptWithFullOptions } from '../../src/net/accept.js';

async function listening(server: Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return (server.address() as AddressInfo).port;
}

function dial(port: number): Socket {
  const client = new Socket({ allowHalfOpen: false, emitClose: false, autoDestroy: true, decodeStrings: false } as object);
  client.on('error', () => {});
  return client.connect(port, '127.0.0.1');
}

/** The value net.js keeps under its `kSetNoDelay` symbol. */
function noDelayFlag(socket: Socket): unknown {
  const key = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'kSetNoDelay');
  return key === undefined ? undefined : (socket as unknown as Record<symbol, unknown>)[key];
}

t.test("nothing is replaced before the server listens, nor on a handle unlike Node 20's", (t) => {
  t.equal(acceptWithFullOptions(createServer()), false);
  const unlike = { _handle: { onconnection() {} } } as unknown as Server;
  t.equal(acceptWithFullOptions(unlike), false, 'no connection count: left alone');
  const alike = { _handle: { onconnection() {} }, _connections: 0 } as unknown as Server;
  t.equal(acceptWithFullOptions(alike, '22.13.0'), false, 'another Node major: its own function stays');
  t.equal(acceptWithFullOptions(alike, '20.20.2'), true, 'the same handle on Node 20: replaced');
  t.end();
});

t.test('subscribers of net.server.socket still hear of each accepted socket', { timeout: 10_000 }, async (t) => {
  const server = createServer((s) => s.destroy());
  const port = await listening(server);
  t.equal(acceptWithFullOptions(server), true);
  const heard = new Promise<unknown>((r) => {
    const onMessage = (message: unknown) => {
      unsubscribe('net.server.socket', onMessage);
      r(message);
    };
    subscribe('net.server.socket', onMessage);
  });
  const client = dial(port);
  const message = (await heard) as { socket?: unknown };
  t.ok(message.socket instanceof Socket, 'published with the socket');
  client.destroy();
  await new Promise<void>((r) => server.close(() => r()));
});

t.test('accepted sockets are counted, owned by the server, echo, and a closing server drains', async (t) => {
  const accepted: Socket[] = [];
  const server = createServer((s) => {
    accepted.push(s);
    s.pipe(s);
  });
  const port = await listening(server);
  t.equal(acceptWithFullOptions(server), true);
  t.equal(acceptWithFullOptions(server), true, 'a second call keeps the first');
  const clients = [dial(port), dial(port), dial(port)];
  await new Promise<void>((r) => {
    const check = () => (accepted.length === 3 ? r() : setTimeout(check, 5));
    check();
  });
  t.ok(
    accepted.every((s) => (s as Socket & { server: Server }).server === server),
    'socket.server is the server',
  );
  const count = await new Promise<number>((r, j) => server.getConnections((err, n) => (err ? j(err) : r(n))));
  t.equal(count, 3, 'getConnections counts them once each');
  t.equal(noDelayFlag(accepted[0] as Socket), false, 'a net.Server without noDelay leaves Nagle on');
  const echoed = await new Promise<string>((r) => {
    (clients[0] as Socket).once('data', (d) => r(d.toString()));
    (clients[0] as Socket).write('ping');
  });
  t.equal(echoed, 'ping');
  const closed = new Promise<void>((r) => server.close(() => r()));
  for (const c of clients) c.destroy();
  await closed;
  t.pass('server.close() returned once every accepted socket closed');
});

t.test("an http server's noDelay reaches the accepted socket", async (t) => {
  const server = createHttpServer();
  let socket: Socket | null = null;
  server.on('connection', (s: Socket) => (socket = s));
  const port = await listening(server);
  t.equal(acceptWithFullOptions(server), true);
  const client = dial(port);
  await new Promise<void>((r) => {
    const check = () => (socket !== null ? r() : setTimeout(check, 5));
    check();
  });
  t.equal(noDelayFlag(socket as unknown as Socket), true, 'TCP_NODELAY set, as node:http asks by default');
  client.destroy();
  await new Promise<void>((r) => server.close(() => r()));
});

t.test("a maxConnections limit is still Node's: the extra connection is dropped", { timeout: 10_000 }, async (t) => {
  const server = createServer(() => {});
  server.maxConnections = 1;
  const port = await listening(server);
  t.equal(acceptWithFullOptions(server), true);
  const dropped = new Promise<void>((r) => server.once('drop', () => r()));
  const first = dial(port);
  await new Promise((r) => server.once('connection', r));
  const second = dial(port);
  await dropped;
  t.pass("'drop' emitted for the connection over the limit");
  first.destroy();
  second.destroy();
  await new Promise<void>((r) => server.close(() => r()));
});

t.test('accepting builds no hidden classes per socket', async (t) => {
  // Without full options every accepted socket made new maps: ~1.5 KB of old space each here.
  const oldSpace = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'old_space')?.space_used_size ?? 0;
  const server = createServer((s) => s.destroy());
  const port = await listening(server);
  t.equal(acceptWithFullOptions(server), true);
  const growthPerSocket = async (n: number): Promise<number> => {
    let accepted = 0;
    let done = () => {};
    const all = new Promise<void>((r) => (done = r));
    const onConnection = () => {
      if (++accepted === n) done();
    };
    server.on('connection', onConnection);
    const before = oldSpace();
    for (let i = 0; i < n; i++) dial(port);
    await all;
    const growth = (oldSpace() - before) / n;
    server.off('connection', onConnection);
    await new Promise((r) => setTimeout(r, 20));
    return growth;
  };
  await growthPerSocket(200); // the first sockets build the maps once
  const least = Math.min(await growthPerSocket(500), await growthPerSocket(500), await growthPerSocket(500));
  t.ok(least < 300, `old-space growth per accepted socket: ${least.toFixed(0)} bytes`);
  await new Promise<void>((r) => server.close(() => r()));
});
