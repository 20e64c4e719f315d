/**
 * listenOn (src/net/listen.ts): listening or not, it leaves none of its listeners behind, so a
 * later 'error' reaches the accept-failure reporting rather than a stale promise.
 */
import { createServer } from 'node:net';
import type { Server } from 'node:net';
import t from 'tap';
import { listenOn } from '../../src/net/listen.js';

const listeners = (server: Server) => [server.listenerCount('error'), server.listenerCount('listening')];

t.test('resolves with the bound address and leaves no listener', async (t) => {
  const server = createServer();
  t.teardown(() => server.close());
  const before = listeners(server);
  const addr = await listenOn(server, '127.0.0.1', 0);
  t.match(addr, { address: '127.0.0.1', family: 'IPv4' });
  t.ok(addr.port > 0);
  t.same(listeners(server), before);
});

t.test('a failure to listen rejects and leaves no listener', async (t) => {
  const first = createServer();
  t.teardown(() => first.close());
  const { port } = await listenOn(first, '127.0.0.1', 0);
  const second = createServer();
  const before = listeners(second);
  await t.rejects(listenOn(second, '127.0.0.1', port), { code: 'EADDRINUSE' }, 'the port is taken (an event)');
  t.same(listeners(second), before);
  await t.rejects(listenOn(second, '127.0.0.1', -1), { code: 'ERR_SOCKET_BAD_PORT' }, 'a bad port (thrown)');
  t.same(listeners(second), before);
  await t.rejects(listenOn(first, '127.0.0.1', 0), { code: 'ERR_SERVER_ALREADY_LISTEN' }, 'already listening (thrown)');
  t.same(listeners(first), before);
  t.equal(first.listening, true, 'the listening server is left as it was');
});
