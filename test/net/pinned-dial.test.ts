/**
 * The pinned dial's `readInto` (src/net/pinned-dial.ts): a tunnel's upstream that reads into the
 * relay's buffers starts paused, so what a server sends first (a banner) is read only once the
 * tunnel resumes it, after its `200`. Loopback only. And its options leave net.Socket's
 * constructor nothing to add (V8 would build new hidden classes for every socket).
 */
import { Socket, createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import v8 from 'node:v8';
import t from 'tap';
import { canonicalHost } from '../../src/net/address.js';
import type { IpAddress } from '../../src/net/address.js';
import { connectOptions, dialPinned } from '../../src/net/pinned-dial.js';
import type { PinnedConnection } from '../../src/net/pinned-dial.js';

const loopback = ((): IpAddress => {
  const h = canonicalHost('127.0.0.1');
  if (h.kind !== 'ip') throw new Error('not an IP');
  return h.ip;
})();

t.test('with readInto the socket reads nothing until resumed, then into the given buffer', async (t) => {
  const server = createServer((s) => s.end('banner'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const buffer = Buffer.alloc(64);
  const reads: string[] = [];
  const conn = await new Promise<PinnedConnection>((resolve, reject) =>
    dialPinned([loopback], port, 2_000, undefined, (err, c) => (err ? reject(err) : resolve(c as PinnedConnection)), {
      buffer: () => buffer,
      callback: (n, b) => {
        reads.push(Buffer.from(b.subarray(0, n)).toString());
        return true;
      },
    }),
  );
  await new Promise((r) => setTimeout(r, 200));
  t.same(reads, [], 'the banner waits in the kernel while the socket is paused');
  t.equal(conn.socket.bytesRead, 0);
  conn.socket.resume();
  await new Promise((r) => conn.socket.once('end', r));
  t.same(reads, ['banner'], 'read once resumed, into the buffer given');
  conn.socket.destroy();
});

t.test('the dial options leave net.Socket nothing to add: no new hidden classes per socket', (t) => {
  // Node 20's V8 builds a new map for every property added to a spread copy of an object, and
  // net.Socket spreads its options and adds four. Measured as old-space growth over 2,000
  // sockets that never connect: about 1 KB per socket with the four keys missing, 0.8 KB with
  // one. (A V8 that reuses the maps passes too.)
  const oldSpace = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'old_space')?.space_used_size ?? 0;
  const growthPerSocket = () => {
    const before = oldSpace();
    for (let i = 0; i < 2_000; i++) new Socket(connectOptions(loopback, 9, undefined));
    return (oldSpace() - before) / 2_000;
  };
  growthPerSocket(); // the first sockets build the maps once
  const least = Math.min(growthPerSocket(), growthPerSocket(), growthPerSocket());
  t.ok(least < 150, `old-space growth per socket: ${least.toFixed(0)} bytes`);
  t.match(connectOptions(loopback, 9, undefined), { host: '127.0.0.1', port: 9, family: 4, allowHalfOpen: false });
  t.end();
});
