/**
 * The pinned dial's `readInto` (src/net/pinned-dial.ts): a tunnel's upstream that reads into the
 * relay's buffers starts paused, so what a server sends first (a banner) is read only once the
 * tunnel resumes it, after its `200`. Loopback only.
 */
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { canonicalHost } from '../../src/net/address.js';
import type { IpAddress } from '../../src/net/address.js';
import { dialPinned } from '../../src/net/pinned-dial.js';
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
