/**
 * One open CONNECT tunnel: the client's socket and the pinned upstream socket piped both ways,
 * one idle timer, one end reason, and a single report to its owner when both sockets are closed.
 * The upstream is read into buffers the relay keeps (relay-buffers.ts; `UPSTREAM_READS` is its
 * dial option), the client as Node reads it.
 *
 * Shaped for many long idle tunnels: the state is one object, the sockets point at it, and the
 * listeners are shared module functions (`this` is the socket), so an idle tunnel holds no
 * per-tunnel closures or timers (the idle timeout is idle-sweep.ts's, one timer for all). The relay is written out rather
 * than `pipe()`d for the same reason: pipe() adds nine closures per direction (a third of an
 * idle tunnel's heap) and their set-up and tear-down on every CONNECT.
 */
import type { OnReadOpts, Socket } from 'node:net';
import type { EndReason } from '../events/events.js';
import type { IdleWatched } from './idle-sweep.js';
import { giveBackOwnedBuffer, nextReadBuffer, readNextInto, takeOwnedBuffer } from './relay-buffers.js';

const TUNNEL = Symbol('tunnel');
const CONNECTION_ESTABLISHED = Buffer.from('HTTP/1.1 200 Connection Established\r\n\r\n', 'latin1');
type TunnelSocket = Socket & { [TUNNEL]?: Tunnel };

export interface TunnelOwner {
  /** Both sockets are closed; `tunnel.end` says why. */
  tunnelEnded(tunnel: Tunnel): void;
}

export class Tunnel implements IdleWatched {
  end: EndReason | null = null;
  private closedSockets = 0;
  /** The upstream's own read buffer (relay-buffers.ts), while it has one. */
  private ownReadBuffer: Buffer | null = null;
  /** The idle sweep's bookkeeping (idle-sweep.ts). */
  idleBytes = 0;
  idleSince = 0;

  /**
   * Takes both sockets: from here a close or an error on either ends the tunnel (and is
   * reported), even before `open`.
   */
  constructor(
    readonly connId: string,
    /** What the owner counts this tunnel against (`max_tunnels_per_client`). */
    readonly limitKey: string,
    readonly client: Socket,
    readonly upstream: Socket,
    readonly started: number,
    private readonly owner: TunnelOwner,
  ) {
    for (const socket of [client, upstream] as TunnelSocket[]) {
      socket[TUNNEL] = this;
      socket.on('error', onError);
      socket.on('close', onClose);
    }
  }

  /**
   * Answers `200`, forwards what the client sent after its CONNECT head, and starts relaying;
   * only ends the tunnel if a socket is already gone (destroyed, its 'close' still to come).
   */
  open(head: Buffer): boolean {
    const { client, upstream } = this;
    if (client.destroyed || upstream.destroyed) {
      this.abort(client.destroyed ? 'client_closed' : 'upstream_closed');
      return false;
    }
    client.write(CONNECTION_ESTABLISHED);
    if (head.length > 0) upstream.write(head);
    for (const socket of [client, upstream]) {
      socket.on('data', onData);
      socket.on('drain', onDrain);
      socket.on('end', onEnd);
    }
    // Dialled with UPSTREAM_READS, the upstream waits paused and emits no 'data' (its reads come
    // to onUpstreamRead); a plain socket flows with its 'data' listener either way.
    upstream.resume();
    // The client finished sending before its 200 (its FIN came with the head, its 'end' before
    // these listeners): the upstream gets the FIN after the head, as it would have in the relay.
    if (client.readableEnded) onEnd.call(client);
    return true;
  }

  /** No byte either way for the idle timeout (idle-sweep.ts). */
  idleExpired(): void {
    this.abort('idle_timeout');
  }

  /** Records the first reason the tunnel is ending for. */
  finish(reason: EndReason): void {
    if (this.end === null) this.end = reason;
  }

  abort(reason: EndReason): void {
    this.finish(reason);
    this.client.destroy();
    this.upstream.destroy();
  }

  other(socket: Socket): Socket {
    return socket === this.client ? this.upstream : this.client;
  }

  endedBy(socket: Socket): EndReason {
    return socket === this.client ? 'client_closed' : 'upstream_closed';
  }

  socketClosed(socket: Socket): void {
    this.finish(this.endedBy(socket));
    const other = this.other(socket);
    // A side that ended cleanly had its FIN passed on (onEnd): bytes it sent that still wait to be
    // written to the other go out first, then the other closes. Destroyed at once, they were lost
    // and the stream arrived short with a clean FIN (red team). The idle sweep bounds a reader
    // that never takes them. Anything else (a reset, an abort) closes the other at once.
    if (socket.readableEnded && other.writableLength > 0 && !other.destroyed) other.end(() => other.destroy());
    else other.destroy();
    if (++this.closedSockets === 2) {
      // Both handles are closed, so no read or pending write points into it any more.
      if (this.ownReadBuffer !== null) giveBackOwnedBuffer(this.ownReadBuffer);
      this.ownReadBuffer = null;
      this.owner.tunnelEnded(this);
      // A closed socket's object outlives its connection past scavenges (measured: promoted,
      // with whatever it points at): let it keep nothing of the call's.
      (this.client as TunnelSocket)[TUNNEL] = undefined;
      (this.upstream as TunnelSocket)[TUNNEL] = undefined;
    }
  }

  /**
   * Relays `length` bytes the upstream read into `buffer` (relay-buffers.ts) to the client, and
   * says which buffer its next read goes into. False: stop reading until the client's 'drain'.
   */
  relayUpstream(length: number, buffer: Buffer): boolean {
    const client = this.client;
    const own = this.ownReadBuffer;
    if (buffer !== own || length < client.writableHighWaterMark) {
      // Copied out. The shared buffer is overwritten by the next read of any socket. A short read
      // from the socket's own buffer is copied too: a write under the high-water mark that the
      // kernel does not take at once gets no 'drain', so nothing would say when it is done with
      // the buffer; and a short read means the sender has slowed, so the buffer goes back.
      const chunk = Buffer.allocUnsafe(length);
      buffer.copy(chunk, 0, 0, length);
      if (buffer === own) {
        this.ownReadBuffer = null;
        giveBackOwnedBuffer(own);
      } else if (length === buffer.length) {
        // The shared buffer filled: a sender with more waiting gets a buffer of its own (if one is left).
        this.ownReadBuffer = takeOwnedBuffer();
        if (this.ownReadBuffer !== null) readNextInto(this.ownReadBuffer);
      }
      return client.write(chunk);
    }
    // At or over the high-water mark, this write returns false and 'drain' follows once the
    // kernel has taken all of it: until then it points into the buffer, and the socket waits.
    client.write(length === buffer.length ? buffer : buffer.subarray(0, length));
    if (client.writableLength > 0) {
      readNextInto(buffer);
      return false;
    }
    if (length * 2 < buffer.length) {
      // Taken at once, and the sender has slowed: back to the shared buffer.
      this.ownReadBuffer = null;
      giveBackOwnedBuffer(buffer);
    } else readNextInto(buffer);
    return true;
  }
}

/**
 * The dial option of tunnel upstreams (pinned-dial.ts `readInto`): reads go into the relay's
 * buffers and to onUpstreamRead, not to a new Buffer and 'data' each.
 */
export const UPSTREAM_READS: OnReadOpts = { buffer: nextReadBuffer, callback: onUpstreamRead };

/** `onread.callback`: Node calls it as a method of the socket that read. */
function onUpstreamRead(this: TunnelSocket, length: number, buffer: Buffer): boolean {
  const tunnel = this[TUNNEL];
  // Not a tunnel's (any more): nothing to relay to. The next read stays on the shared buffer.
  return tunnel === undefined ? false : tunnel.relayUpstream(length, buffer);
}

/** Relays a chunk; a peer that cannot take more pauses this side until it drains. */
function onData(this: TunnelSocket, chunk: Buffer): void {
  const tunnel = this[TUNNEL];
  if (tunnel && !tunnel.other(this).write(chunk)) this.pause();
}

function onDrain(this: TunnelSocket): void {
  this[TUNNEL]?.other(this).resume();
}

/** One side finished sending: so does the relay towards the other (a half-close, as pipe() does). */
function onEnd(this: TunnelSocket): void {
  const tunnel = this[TUNNEL];
  if (!tunnel) return;
  tunnel.finish(tunnel.endedBy(this));
  tunnel.other(this).end();
}

/** A reset is that side going away (`client_closed`/`upstream_closed`); anything else is `error`. */
function onError(this: TunnelSocket, err: NodeJS.ErrnoException): void {
  const tunnel = this[TUNNEL];
  tunnel?.finish(err.code === 'ECONNRESET' || err.code === 'EPIPE' ? tunnel.endedBy(this) : 'error');
  tunnel?.other(this).destroy();
  this.destroy();
}

function onClose(this: TunnelSocket): void {
  this[TUNNEL]?.socketClosed(this);
}
