/**
 * The upstream read buffers (src/proxy/relay-buffers.ts, relayed by src/proxy/tunnel.ts): reads
 * of every tunnel share one buffer until a tunnel's sender outpaces it, then that tunnel reads
 * into one of its own. The danger is bytes of one tunnel overwriting bytes another has not sent
 * yet, so the end-to-end test moves distinct streams through several tunnels at once, with
 * readers that stall (writes the kernel does not take at once), and checks every byte.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import { createServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import t from 'tap';
import {
  MAX_OWNED_BUFFERS,
  giveBackOwnedBuffer,
  nextReadBuffer,
  readNextInto,
  relayBufferCounts,
  sharedReadBuffer,
  takeOwnedBuffer,
} from '../../src/proxy/relay-buffers.js';
import { startTestProxyFor } from '../helpers/proxy.js';
import { openTunnel } from '../helpers/raw.js';

const POLICY = 'version: 1\ndefault_verdict: allow\nrules: []\n';

/** Stream `seed`'s bytes are PATTERN from an offset of its own, wrapping: any misplaced byte shows. */
const PATTERN = randomBytes(1024 * 1024 + 4099);
const streamBytes = (seed: number, position: number, length: number): Buffer => {
  const out = Buffer.allocUnsafe(length);
  let at = (position + seed * 104_729) % PATTERN.length;
  for (let filled = 0; filled < length;) {
    const n = Math.min(length - filled, PATTERN.length - at);
    PATTERN.copy(out, filled, at, at + n);
    filled += n;
    at = 0;
  }
  return out;
};

/** Bulk: writes of mixed sizes, a short pause every seventh (a sender that slows hands its own buffer back). */
const BULK = { sizes: [256 * 1024, 1000, 70_000, 3_000, 512 * 1024, 17], pauseEvery: 7, pauseMs: 15 };
/** Trickle: small writes, each in its own turn, so reads stay under the shared buffer's size. */
const TRICKLE = { sizes: [9_000, 200, 15_000, 4_000, 1], pauseEvery: 1, pauseMs: -1 };

/** An upstream that reads a seed line, then sends that stream: `total` bytes, written as `how` says. */
async function streamServer(t: { teardown(fn: () => unknown): void }, total: number, how: typeof BULK): Promise<number> {
  const server = createServer((s) => {
    s.on('error', () => {});
    s.once('data', (line: Buffer) => {
      const seed = Number(line.toString().trim());
      let sent = 0;
      let turn = 0;
      const pump = (): void => {
        while (sent < total) {
          const size = Math.min(total - sent, how.sizes[turn++ % how.sizes.length] as number);
          const ok = s.write(streamBytes(seed, sent, size));
          sent += size;
          if (turn % how.pauseEvery === 0) return void (how.pauseMs < 0 ? setImmediate(pump) : setTimeout(pump, how.pauseMs));
          if (!ok) return void s.once('drain', pump);
        }
        s.end();
      };
      pump();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  return (server.address() as AddressInfo).port;
}

/** Reads stream `seed` to its end, stalling `stallMs` after each MiB; resolves with the first mismatch, if any. */
async function readStream(
  socket: Socket,
  rest: Buffer,
  seed: number,
  stallMs: number,
): Promise<{ received: number; mismatchAt: number | null }> {
  let received = 0;
  let mismatchAt: number | null = null;
  let sinceStall = 0;
  const check = (chunk: Buffer): void => {
    if (mismatchAt === null && !chunk.equals(streamBytes(seed, received, chunk.length))) {
      const expected = streamBytes(seed, received, chunk.length);
      let i = 0;
      while (chunk[i] === expected[i]) i++;
      mismatchAt = received + i;
    }
    received += chunk.length;
    sinceStall += chunk.length;
    if (stallMs > 0 && sinceStall > 1024 * 1024) {
      sinceStall = 0;
      socket.pause();
      setTimeout(() => socket.resume(), stallMs);
    }
  };
  if (rest.length > 0) check(rest);
  socket.on('data', check);
  socket.write(`${seed}\n`);
  await once(socket, 'end');
  socket.end();
  return { received, mismatchAt };
}

t.test('eight tunnels at once, readers stalling: every byte of every stream arrives, in order', async (t) => {
  const proxy = await startTestProxyFor(t, { policy: POLICY });
  const total = 12 * 1024 * 1024;
  const port = await streamServer(t, total, BULK);
  const lentBefore = relayBufferCounts().lent;
  const tunnels = await Promise.all(Array.from({ length: 8 }, () => openTunnel(proxy.port, port)));
  const results = await Promise.all(tunnels.map(({ socket, rest }, seed) => readStream(socket, rest, seed, seed % 2 === 0 ? 40 : 0)));
  for (const [seed, r] of results.entries()) {
    t.equal(r.mismatchAt, null, `stream ${seed}: no byte out of place`);
    t.equal(r.received, total, `stream ${seed}: all of it`);
  }
  t.ok(relayBufferCounts().lent - lentBefore >= 8, 'every tunnel read into a buffer of its own, at times');
  while (proxy.running.proxy.activeCalls > 0) await new Promise((r) => setTimeout(r, 10));
  t.equal(relayBufferCounts().owned, 0, 'every buffer given back when its tunnel ended');
});

t.test('with every own buffer out, tunnels share one: readers stalling, no stream gets bytes of another', async (t) => {
  const proxy = await startTestProxyFor(t, { policy: POLICY });
  // The cap reached (by this test holding them all): every read goes into the shared buffer.
  const held: Buffer[] = [];
  for (let b = takeOwnedBuffer(); b !== null; b = takeOwnedBuffer()) held.push(b);
  t.teardown(() => held.forEach(giveBackOwnedBuffer));
  const total = 6 * 1024 * 1024;
  const bulk = await streamServer(t, total, BULK);
  const trickle = await streamServer(t, total, TRICKLE);
  const tunnels = await Promise.all(Array.from({ length: 8 }, (_, i) => openTunnel(proxy.port, i % 4 === 0 ? trickle : bulk)));
  const results = await Promise.all(
    tunnels.map(({ socket, rest }, seed) => readStream(socket, rest, seed + 100, seed % 2 === 0 ? 100 : 0)),
  );
  for (const [seed, r] of results.entries()) {
    t.equal(r.mismatchAt, null, `stream ${seed}: no byte out of place`);
    t.equal(r.received, total, `stream ${seed}: all of it`);
  }
  t.equal(relayBufferCounts().owned, held.length, 'no tunnel got one');
});

t.test('a tunnel whose sender slows gives its buffer back while it stays open', async (t) => {
  const proxy = await startTestProxyFor(t, { policy: POLICY });
  let upstream: Socket | undefined;
  const server = createServer((s) => {
    upstream = s;
    s.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  const { socket } = await openTunnel(proxy.port, (server.address() as AddressInfo).port);
  let received = 0;
  socket.on('data', (d: Buffer) => (received += d.length));
  while (upstream === undefined) await new Promise((r) => setTimeout(r, 5));
  const burst = 8 * 1024 * 1024;
  const lentBefore = relayBufferCounts().lent;
  for (let sent = 0; sent < burst; sent += 256 * 1024) upstream.write(Buffer.alloc(256 * 1024, 1));
  while (received < burst) await new Promise((r) => setTimeout(r, 5));
  t.ok(relayBufferCounts().lent > lentBefore, 'the burst was read into a buffer of its own');
  upstream.write('a trickle');
  while (received < burst + 9) await new Promise((r) => setTimeout(r, 5));
  t.equal(relayBufferCounts().owned, 0, 'a short read handed it back');
  t.equal(proxy.running.proxy.activeCalls, 1, 'the tunnel is still open');
  socket.destroy();
});

t.test('who owns the memory after a write the kernel leaves pending (a stand-in client)', async (t) => {
  const { Tunnel } = await import('../../src/proxy/tunnel.js');
  /** A client whose writes all stay pending (a full socket buffer), as node:net counts them. */
  class PendingClient extends EventEmitter {
    writableHighWaterMark = 16 * 1024;
    writableLength = 0;
    written: Buffer[] = [];
    destroyed = false;
    write(chunk: Buffer): boolean {
      this.written.push(chunk);
      this.writableLength += chunk.length;
      return this.writableLength < this.writableHighWaterMark;
    }
    destroy(): void {}
  }
  const client = new PendingClient();
  const upstream = new PendingClient();
  const tunnel = new Tunnel('c-1', 'k', client as unknown as Socket, upstream as unknown as Socket, 0, { tunnelEnded: () => {} });
  const shared = sharedReadBuffer();
  const sharesMemory = (a: Buffer, b: Buffer) =>
    a.buffer === b.buffer && a.byteOffset >= b.byteOffset && a.byteOffset < b.byteOffset + b.length;

  // A full read of the shared buffer: copied, and the socket gets a buffer of its own next.
  t.equal(tunnel.relayUpstream(shared.length, shared), false, 'over the high-water mark: wait for drain');
  t.notOk(sharesMemory(client.written[0] as Buffer, shared), 'what was read into the shared buffer is written from a copy');
  const own = nextReadBuffer();
  t.not(own, shared, 'the next read goes into a buffer of its own');

  // A big read from it, left pending: written from the buffer itself; the socket waits for 'drain'.
  client.writableLength = 0;
  t.equal(tunnel.relayUpstream(40_000, own), false);
  t.ok(sharesMemory(client.written[1] as Buffer, own), 'no copy from its own buffer');
  t.equal(nextReadBuffer(), own, 'it keeps the buffer: the pending write points into it');
  t.equal(relayBufferCounts().owned, 1);

  // A short read from it, left pending without a 'drain' to come (under the high-water mark): copied,
  // the socket reads on, and the buffer goes back.
  client.writableLength = 0;
  t.equal(tunnel.relayUpstream(1_000, own), true, 'reads on: no drain will come for this write');
  t.notOk(sharesMemory(client.written[2] as Buffer, own), 'written from a copy');
  t.equal(nextReadBuffer(), shared, 'back on the shared buffer');
  t.equal(relayBufferCounts().owned, 0, 'the buffer given back');
  t.same(
    client.written.map((b) => b.length),
    [shared.length, 40_000, 1_000],
  );
});

t.test('the lending itself', async (t) => {
  const shared = sharedReadBuffer();
  t.equal(nextReadBuffer(), shared, 'sockets start on the shared buffer');
  const own = takeOwnedBuffer() as Buffer;
  t.not(own, shared);
  readNextInto(own);
  t.equal(nextReadBuffer(), own, 'the read callback chooses the next read buffer');
  t.equal(nextReadBuffer(), shared, '…for the next read of that socket only');
  giveBackOwnedBuffer(own);

  const out: Buffer[] = [];
  for (let i = 0; i < MAX_OWNED_BUFFERS; i++) out.push(takeOwnedBuffer() as Buffer);
  t.equal(new Set(out).size, MAX_OWNED_BUFFERS, 'each one distinct');
  t.equal(takeOwnedBuffer(), null, `no more than ${MAX_OWNED_BUFFERS} out at once`);
  giveBackOwnedBuffer(out.pop() as Buffer);
  const again = takeOwnedBuffer();
  t.ok(again, 'one given back can be taken again');
  out.push(again as Buffer);
  for (const b of out) giveBackOwnedBuffer(b);
  t.equal(relayBufferCounts().owned, 0);
  t.ok(relayBufferCounts().free <= 32, 'a bounded number kept for reuse');
});
