/**
 * Idle tunnels are closed by one timer for all of them. A socket timeout per tunnel restarts
 * on every chunk read and written (a timer-list reinsertion and a clock read per chunk) and
 * holds a timer and a bound callback per idle tunnel; here a sweep reads each tunnel's byte
 * counters a few times per timeout instead.
 *
 * A tunnel is idle when neither side has sent a byte (`bytesRead` of both sockets unchanged):
 * a peer that stops reading stops the relay reading the other side too, so that counts as idle
 * as well. It is closed between `idleMs` and `idleMs` plus two sweep periods after its last byte
 * (a period is a tenth of the timeout, at most a second).
 */
import type { Socket } from 'node:net';
import { LiveSet } from './live-set.js';

/** What the sweep watches: the two sockets, and what to do when they have been quiet too long. */
export interface IdleWatched {
  readonly client: Socket;
  readonly upstream: Socket;
  /** Bytes both sides had read at the last sweep, and when that last changed (ms). */
  idleBytes: number;
  idleSince: number;
  idleExpired(): void;
}

export class IdleSweep<T extends IdleWatched> {
  private readonly watched = new LiveSet<T>();
  private timer: NodeJS.Timeout | null = null;
  private readonly periodMs: number;

  constructor(private readonly idleMs: number) {
    this.periodMs = Math.max(1, Math.min(1_000, Math.floor(idleMs / 10)));
  }

  add(item: T): void {
    item.idleBytes = item.client.bytesRead + item.upstream.bytesRead;
    item.idleSince = Date.now();
    this.watched.add(item);
    if (this.timer === null) this.timer = setInterval(this.sweep, this.periodMs).unref();
  }

  delete(item: T): void {
    this.watched.delete(item);
    if (this.watched.size === 0 && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }

  private readonly sweep = (): void => {
    const now = Date.now();
    for (const item of this.watched) {
      const bytes = item.client.bytesRead + item.upstream.bytesRead;
      if (bytes !== item.idleBytes) {
        item.idleBytes = bytes;
        item.idleSince = now;
      } else if (now - item.idleSince >= this.idleMs) {
        this.watched.delete(item);
        item.idleExpired();
      }
    }
    if (this.watched.size === 0 && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
  };
}
