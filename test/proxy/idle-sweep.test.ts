/** One sweep for every tunnel's idle timeout: traffic either way keeps a tunnel, silence ends it, and no timer outlives the tunnels. */
import type { Socket } from 'node:net';
import t from 'tap';
import { IdleSweep } from '../../src/proxy/idle-sweep.js';
import type { IdleWatched } from '../../src/proxy/idle-sweep.js';

function watched(): IdleWatched & { client: { bytesRead: number }; upstream: { bytesRead: number }; expiredAt: number | null } {
  const item = {
    client: { bytesRead: 0 } as Socket & { bytesRead: number },
    upstream: { bytesRead: 0 } as Socket & { bytesRead: number },
    idleBytes: 0,
    idleSince: 0,
    expiredAt: null as number | null,
    idleExpired() {
      item.expiredAt = Date.now();
    },
  };
  return item;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('bytes from either side keep a tunnel; a quiet one ends after the timeout, not much later', async (t) => {
  const sweep = new IdleSweep(200);
  const quiet = watched();
  const fromClient = watched();
  const fromUpstream = watched();
  const started = Date.now();
  for (const w of [quiet, fromClient, fromUpstream]) sweep.add(w);
  for (let i = 0; i < 8; i++) {
    await sleep(50);
    fromClient.client.bytesRead += 10;
    fromUpstream.upstream.bytesRead += 10;
  }
  t.not(quiet.expiredAt, null, 'the quiet one ended');
  const after = (quiet.expiredAt as number) - started;
  t.ok(after >= 200 && after < 1000, `after ${after} ms (timeout 200 ms, period 20 ms; generous for a loaded machine)`);
  t.equal(fromClient.expiredAt, null, 'client bytes kept it open past the timeout');
  t.equal(fromUpstream.expiredAt, null, 'upstream bytes kept it open past the timeout');
  await sleep(300);
  t.not(fromClient.expiredAt, null, 'then silence ended it too');
  t.not(fromUpstream.expiredAt, null);
  t.equal((sweep as unknown as { timer: unknown }).timer, null, 'nothing watched: no timer');
});

t.test('a tunnel that ends is forgotten, and the timer stops with the last one', async (t) => {
  const sweep = new IdleSweep(100);
  const a = watched();
  sweep.add(a);
  t.not((sweep as unknown as { timer: unknown }).timer, null);
  sweep.delete(a);
  t.equal((sweep as unknown as { timer: unknown }).timer, null);
  await sleep(150);
  t.equal(a.expiredAt, null, 'a deleted tunnel is never expired');
});
