/**
 * Keep-alive for plain HTTP without giving up the pin.
 *
 * Threat: a pool keyed by name reuses (or opens) a connection to wherever the name pointed at
 * some other moment, which undoes the pinned dial. Here every upstream connection is an undici
 * `Client` over one socket that came from the pinned dial, filed under the address that socket
 * is actually connected to. A call takes an idle connection only to an address its own decision
 * vetted (its candidates, in order); otherwise it dials its candidates afresh. Nothing here
 * resolves a name: the Client's `connect` hands over the socket already dialled, once.
 *
 * Scope: choosing and recycling connections. Framing, timeouts and the answer are the caller's
 * (proxy/forward.ts). undici rather than http.Agent + http.request: the
 * same forwarder is about 1.5x faster with undici's client (README, "Why the core is not
 * proxy-chain").
 */
import type { Socket } from 'node:net';
import { Client } from 'undici';
import type { IpAddress } from './address.js';
import { pinnedDial } from './pinned-dial.js';
import type { DialCancel } from './pinned-dial.js';

export interface UpstreamConnection {
  readonly client: Client;
  readonly socket: Socket;
  /** The vetted address the socket is connected to. */
  readonly address: IpAddress;
  readonly port: number;
  /** Requests this connection carried before; 0 on a fresh dial. */
  uses: number;
  /** False once the upstream asked to close or a request on it failed. */
  reusable: boolean;
}

export interface PinnedPoolOptions {
  /** How long an idle upstream connection is kept (undici shortens it to the server's hint). */
  readonly keepAliveMs?: number;
  /** Idle connections kept per address and port. */
  readonly maxIdlePerAddress?: number;
  /** Largest upstream response head accepted. */
  readonly maxResponseHeaderBytes?: number;
}

const keyOf = (address: IpAddress, port: number) => `${address.text}|${port}`;

export class PinnedPool {
  private readonly idle = new Map<string, UpstreamConnection[]>();
  private readonly all = new Set<UpstreamConnection>();
  private readonly keepAliveMs: number;
  private readonly maxIdle: number;
  private readonly maxHeaderSize: number;

  constructor(options: PinnedPoolOptions = {}) {
    this.keepAliveMs = options.keepAliveMs ?? 4_000;
    this.maxIdle = options.maxIdlePerAddress ?? 256;
    this.maxHeaderSize = options.maxResponseHeaderBytes ?? 64 * 1024;
  }

  /** Connections open now (idle or busy); for tests. */
  get size(): number {
    return this.all.size;
  }

  /** An idle connection to one of `candidates` (earliest candidate first), or null. */
  takeIdle(candidates: readonly IpAddress[], port: number): UpstreamConnection | null {
    for (const address of candidates) {
      const list = this.idle.get(keyOf(address, port));
      let conn: UpstreamConnection | undefined;
      while ((conn = list?.pop()) !== undefined) {
        if (conn.reusable && !conn.socket.destroyed) return conn;
      }
    }
    return null;
  }

  /** A new connection: the pinned dial to `candidates`, in order. */
  async dial(candidates: readonly IpAddress[], port: number, connectTimeoutMs: number, signal?: DialCancel): Promise<UpstreamConnection> {
    const { socket, address } = await pinnedDial(candidates, port, connectTimeoutMs, signal);
    return this.adopt(socket, address, port);
  }

  /** Returns a connection after its request completed; kept only if it can carry another. */
  release(conn: UpstreamConnection): void {
    conn.uses++;
    if (!conn.reusable || conn.socket.destroyed) return void this.discard(conn);
    const key = keyOf(conn.address, conn.port);
    let list = this.idle.get(key);
    if (!list) this.idle.set(key, (list = []));
    if (list.length >= this.maxIdle) return void this.discard(conn);
    list.push(conn);
  }

  /** Closes a connection (a failed or aborted request: its framing state is unknown). */
  discard(conn: UpstreamConnection): void {
    conn.reusable = false;
    conn.socket.destroy();
  }

  destroy(): void {
    for (const conn of this.all) this.discard(conn);
  }

  private adopt(socket: Socket, address: IpAddress, port: number): UpstreamConnection {
    let handed: Socket | null = socket;
    const origin = address.family === 6 ? `http://[${address.text}]:${port}` : `http://${address.text}:${port}`;
    const client = new Client(origin, {
      // The socket is dialled already; a Client never opens another (a second connect is a bug: refuse it).
      // Called back on a later microtask: undici drops a resume that re-enters its dispatch loop.
      connect: (_options, callback) => {
        const s = handed;
        handed = null;
        queueMicrotask(() => (s && !s.destroyed ? callback(null, s) : callback(new Error('pinned upstream connection is closed'), null)));
      },
      pipelining: 1,
      keepAliveTimeout: this.keepAliveMs,
      keepAliveMaxTimeout: this.keepAliveMs,
      maxHeaderSize: this.maxHeaderSize,
      // The proxy passes bodies through; limits on them are the client's and the origin's.
      maxResponseSize: -1,
      strictContentLength: true,
    });
    const conn: UpstreamConnection = { client, socket, address, port, uses: 0, reusable: true };
    this.all.add(conn);
    // Until undici takes the socket (at its first request) nothing else listens for errors: a
    // reset on a connection pooled unused would otherwise be an uncaught 'error'. 'close' cleans up.
    socket.on('error', ignoreError);
    socket.once('close', () => {
      conn.reusable = false;
      this.all.delete(conn);
      const list = this.idle.get(keyOf(address, port));
      const at = list?.indexOf(conn) ?? -1;
      if (list && at !== -1) {
        list.splice(at, 1);
        if (list.length === 0) this.idle.delete(keyOf(address, port));
      }
      void client.destroy().catch(() => {});
    });
    return conn;
  }
}

function ignoreError(): void {}
