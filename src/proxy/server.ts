/**
 * The data path's listener: CONNECT tunnels and absolute-form plain HTTP on one port. This file
 * accepts, routes and shuts down; the calls themselves are elsewhere:
 *
 *   accept (here: connection cap) → connection-start.ts (CONNECT or not?) →
 *     CONNECT:    connect-head.ts → connect.ts (admission.ts, pinned-dial.ts) → tunnel.ts → closed event
 *     plain HTTP: node:http → pipeline.ts → forward.ts (admission.ts, pinned-pool.ts) → closed event
 *
 * A CONNECT later on a kept-alive connection comes from node:http's 'connect' event into the
 * same connect.ts, once every request before it is answered (pipeline.ts). Every call has its
 * own `conn_id`, decision event and closed event.
 *
 * Written on `node:http` rather than proxy-chain: proxy-chain gives no answer on a failed CONNECT
 * dial, counts bytes per client socket rather than per request, forwards `Proxy-Connection` and
 * a Host that names another authority, and pins only through a `lookup` callback (README,
 * "Why not proxy-chain"; the benchmark keeps it as the baseline row).
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { acceptWithFullOptions } from '../net/accept.js';
import { listenOn } from '../net/listen.js';
import { createBaseline } from '../net/baseline.js';
import { PinnedPool } from '../net/pinned-pool.js';
import { createSelfCheck, OwnListeners } from '../net/self.js';
import { destroyWhenFlushed, endAnswered, failure, sendRawAnswer } from './answers.js';
import type { ErrorCode } from './answers.js';
import { Admission } from './admission.js';
import type { AdmissionOptions } from './admission.js';
import { ConnectPath, destroyOnError } from './connect.js';
import { CONNECT_HAS_NO_BODY } from './connect-head.js';
import { armHeadDeadline, clearHeadDeadline, endHeadDeadlines, readConnectionStart } from './connection-start.js';
import type { ConnectionStartHandlers, ConnectionStartLimits } from './connection-start.js';
import { cutForClientError, PlainHttpPath } from './forward.js';
import { declaresBody } from './headers.js';
import { admitLastHead, admitPipelined } from './pipeline.js';
import { LiveSet } from './live-set.js';

export type { ProxyObserver } from './admission.js';

/** What the server needs: the admission's dependencies (it derives the baseline's `classify` itself), and its other listeners. */
export type ProxyServerOptions = Omit<AdmissionOptions, 'classify'> & {
  /** Other sockets of this process the proxy must never dial (the admin listener). */
  readonly otherListeners?: () => ReadonlyArray<{ address: string; port: number }>;
};

/** Requests read on a connection and not yet answered (watchNextHead). */
const UNANSWERED = Symbol('unanswered requests');
/** node:http keeps an idle connection this long past its `keepAliveTimeout` (Node 20). */
const NODE_KEEP_ALIVE_BUFFER_MS = 1_000;

/** Connections whose failed bytes wait for an earlier answer before the connection ends (onClientError). */
const ENDING_AFTER = new WeakSet<Duplex>();

export class ProxyServer {
  readonly server: Server;
  private readonly admission: Admission;
  private readonly connect: ConnectPath;
  private readonly plain: PlainHttpPath;
  /** Keep-alive connections for plain HTTP, filed by the vetted IP (never by name). */
  private readonly pool = new PinnedPool();
  /** Our listeners, which the baseline refuses as `self`. */
  private readonly ownListeners: OwnListeners;
  /** Every client connection, whoever reads it (closed after the grace period on shutdown). */
  private readonly sockets = new LiveSet<Socket>();
  /** Shared by every connection (one function, `this` is the socket): forget it when it closes. */
  private readonly connectionClosed: (this: Socket) => void;
  /**
   * node:http's own connection listener, taken off the 'connection' event: it runs only for
   * connections that do not open with CONNECT, called from connection-start.ts (`http`).
   */
  private readonly startHandlers: ConnectionStartHandlers;
  private readonly startLimits: ConnectionStartLimits;

  constructor(private readonly options: ProxyServerOptions) {
    const { config } = options;
    this.ownListeners = new OwnListeners(() => this.address, options.otherListeners);
    const classify = createBaseline({
      allowCidrs: config.baseline.allowCidrs,
      isSelf: createSelfCheck({ listeners: this.ownListeners.list }),
    });
    this.admission = new Admission({ ...options, classify });
    this.connect = new ConnectPath(this.admission);
    this.plain = new PlainHttpPath(this.admission, this.pool);
    this.server = createServer({
      maxHeaderSize: config.limits.maxHeaderBytes,
      headersTimeout: config.limits.headerTimeoutMs,
      requestTimeout: 0,
      // An idle kept-alive connection is a client sending nothing: cut like one, at the header
      // timeout when that is shorter than 5 s. node:http closes it a second after the timeout
      // it advertises (its keep-alive buffer), so that second is taken off here.
      keepAliveTimeout: Math.max(100, Math.min(5_000, config.limits.headerTimeoutMs) - NODE_KEEP_ALIVE_BUFFER_MS),
      connectionsCheckingInterval: Math.max(50, Math.min(1_000, Math.floor(config.limits.headerTimeoutMs / 2))),
      requireHostHeader: false,
    });
    const httpListeners = this.server.listeners('connection');
    if (httpListeners.length !== 1) throw new Error(`node:http registered ${httpListeners.length} connection listeners; expected 1`);
    const httpConnection = httpListeners[0] as (socket: Socket) => void;
    this.server.removeListener('connection', httpConnection);
    this.startLimits = { maxHeaderBytes: config.limits.maxHeaderBytes, headerTimeoutMs: config.limits.headerTimeoutMs };
    this.startHandlers = {
      connect: (socket, target, rawHeaders, rest) => this.connect.serve(target, rawHeaders, socket, rest),
      http: (socket) => httpConnection.call(this.server, socket),
      refuse: (socket, code, message) => this.refuseHead(socket, code, message),
    };
    const sockets = this.sockets;
    this.connectionClosed = function (this: Socket) {
      sockets.delete(this);
      clearHeadDeadline(this);
    };
    // Accepted sockets without per-socket hidden classes (accept.ts); before any accept.
    this.server.on('listening', () => acceptWithFullOptions(this.server));
    this.server.on('connection', (socket: Socket) => this.onConnection(socket));
    this.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      clearHeadDeadline(req.socket);
      this.watchNextHead(req.socket, res);
      admitPipelined(req, res, this.plain.accept);
    });
    this.server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.lastHead(socket, head.length, (early) => {
        // As connect-head.ts refuses it on a connection's first head (red team 30: node:http took it).
        if (declaresBody(req.headers)) this.refuseHead(socket, 'bad_request', `malformed request (${CONNECT_HAS_NO_BODY})`);
        else this.connect.serve(req.url ?? '', req.rawHeaders, socket as Socket, early.length === 0 ? head : Buffer.concat([head, early]));
      });
    });
    this.server.on('upgrade', (_req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.lastHead(socket, head.length, () =>
        sendRawAnswer(
          socket,
          failure('bad_request', 'protocol upgrades are not proxied in absolute form; use CONNECT', this.admission.labelFor(null)),
        ),
      );
    });
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.onClientError(err, socket));
  }

  async listen(host: string, port: number): Promise<{ address: string; port: number }> {
    const addr = await listenOn(this.server, host, port);
    return { address: addr.address, port: addr.port };
  }

  get address(): { address: string; port: number } | null {
    const addr = this.server.address();
    return addr && typeof addr === 'object' ? { address: addr.address, port: addr.port } : null;
  }

  get activeCalls(): number {
    return this.admission.active.size;
  }

  /** Forgets the cached listeners (when another listener, e.g. the admin API, starts). */
  refreshSelf(): void {
    this.ownListeners.refresh();
  }

  /**
   * Stops accepting, lets open calls finish for `graceMs`, then ends the rest (`shutdown`).
   */
  async close(graceMs: number): Promise<void> {
    const active = this.admission.active;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    const deadline = Date.now() + graceMs;
    while (active.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 25));
      this.server.closeIdleConnections();
    }
    for (const call of [...active]) call.abort('shutdown');
    this.server.closeAllConnections();
    // Connections node:http does not track: CONNECT heads being read, admitted or dialled.
    for (const socket of [...this.sockets]) socket.destroy();
    this.pool.destroy();
    await closed;
  }

  /**
   * Once every request read on a kept-alive connection is answered, its next head has
   * `header_timeout_ms` from the last answer's end (armHeadDeadline).
   */
  private watchNextHead(socket: Socket, res: ServerResponse): void {
    const s = socket as Socket & { [UNANSWERED]?: number };
    s[UNANSWERED] = (s[UNANSWERED] ?? 0) + 1;
    res.once('close', () => {
      s[UNANSWERED] = (s[UNANSWERED] ?? 1) - 1;
      if (s[UNANSWERED] > 0 || socket.destroyed || !res.writableFinished) return;
      armHeadDeadline(socket, this.options.config.limits.headerTimeoutMs, this.nextHeadExpired);
    });
  }

  /**
   * A CONNECT or Upgrade head: node:http has let go of the socket and reads nothing after it.
   * Served once every request before it on the connection is answered (pipeline.ts), so that
   * no earlier answer lands in a tunnel or after a refusal.
   */
  private lastHead(socket: Duplex, alreadyRead: number, serve: (early: Buffer) => void): void {
    // No head follows: no deadline now, nor armed later by an earlier answer's end (a 408 in a tunnel).
    endHeadDeadlines(socket);
    // node:http took its error listener off: a reset while earlier answers are pending must
    // close the socket, not reach the process.
    socket.on('error', destroyOnError);
    admitLastHead(socket as Socket, alreadyRead, serve);
  }

  private readonly nextHeadExpired = (socket: Socket, sentSomething: boolean): void => {
    if (sentSomething) this.refuseHead(socket, 'request_timeout', 'request headers were not received in time');
    else socket.destroy(); // idle between requests, as node:http's keep-alive timeout would
  };

  private onConnection(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('close', this.connectionClosed);
    if (this.sockets.size > this.options.config.limits.maxConnections) {
      this.refuseHead(socket, 'overloaded', 'too many connections; try again later', { 'retry-after': '1' });
      return;
    }
    readConnectionStart(socket, this.startLimits, this.startHandlers);
  }

  /** A connection answered before any call began (no call, so no decision line). */
  private refuseHead(
    socket: Duplex,
    code: Exclude<ErrorCode, 'firewall_blocked'>,
    message: string,
    headers?: Record<string, string>,
  ): void {
    // Nobody else listens on this socket any more: a reset while the answer goes out must
    // close it, not reach the process as an unhandled 'error'.
    socket.on('error', destroyOnError);
    clearHeadDeadline(socket);
    this.options.observer?.failure?.(code);
    sendRawAnswer(socket, failure(code, message, this.admission.labelFor(null), headers));
    // After a timeout node:http's parser may still read this socket (it is freed only on a parse
    // error): a request finished in the grace period would still be served. The client has
    // sent nothing unread, so closing as soon as the 408 is out loses nothing.
    if (code === 'request_timeout') destroyWhenFlushed(socket);
  }

  private onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    const { maxHeaderBytes } = this.options.config.limits;
    const current = (socket as { _httpMessage?: ServerResponse | null })._httpMessage;
    // An answer of ours already under way on this connection: another one would corrupt it (and
    // a reset client reads nothing).
    // So does a failure inside the body of the request being served (a FIN before its end, a bad
    // chunk): that request can never be completed, so its answer would never come (red team 30:
    // the call and both connections stayed open for good).
    const reset = err.code === 'ECONNRESET' || err.code === 'EPIPE';
    if (current?.headersSent || reset || current?.req.complete === false) {
      // Cut by the proxy for the client's bytes, not left by the client (a reset, or a FIN where
      // more was due): the call ends `error`.
      if (current && !reset && err.code !== 'HPE_INVALID_EOF_STATE') cutForClientError(current);
      socket.destroy();
    } else if (current && !current.destroyed) {
      if (ENDING_AFTER.has(socket)) return; // a second failure (a later timeout): already waiting
      ENDING_AFTER.add(socket);
      // Its answer says the connection ends (red team 30: it said keep-alive, then closed).
      current.shouldKeepAlive = false;
      // The answer to an earlier request is still to come: one written now would take its place,
      // and the client would read it as that request's (red team 29). That answer goes out, then
      // the connection ends; the bytes that failed get none, and nothing waiting behind them is
      // served ('finish' comes before the pipeline's 'close', which finds the socket ended).
      current.once('finish', () => endAnswered(socket));
      current.once('close', () => {
        if (!socket.writableEnded) socket.destroy();
      });
    } else if (err.code === 'HPE_HEADER_OVERFLOW')
      this.refuseHead(socket, 'request_header_too_large', `request headers exceed ${maxHeaderBytes} bytes`);
    else if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT')
      this.refuseHead(socket, 'request_timeout', 'request headers were not received in time');
    else this.refuseHead(socket, 'bad_request', `malformed request (${err.code ?? err.message})`);
  }
}
