/**
 * The first bytes of a new client connection decide who reads it: a connection that opens with
 * `CONNECT ` has its head read here (connect-head.ts) and becomes a tunnel without passing
 * through `node:http`; anything else is handed to `node:http` with the bytes read so far put
 * back (`unshift`, then the server's own connection listener, the way httpolyglot hands
 * sockets over). A CONNECT later on a kept-alive connection is node:http's, as before.
 *
 * The header limits hold on this path too: a head over `maxHeaderBytes` is answered 431, a
 * head not complete `headerTimeoutMs` after the connection opened is answered 408 (a deadline,
 * not an idle timer, so a byte at a time does not keep it open), and a malformed one 400.
 *
 * The deadline stays with a connection handed to node:http until its first request head is
 * complete (server.ts clears it then): node's own header timer starts only at the hand-off, so
 * a client sending `C`, `O` and then the rest late would otherwise get up to twice the time.
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { couldBeConnect, parseConnectHead, startsWithConnect } from './connect-head.js';

export interface ConnectionStartHandlers {
  /** A complete CONNECT head; `rest` is what the client sent after it (its first tunnel bytes). */
  connect(socket: Socket, target: string, rawHeaders: string[], rest: Buffer): void;
  /** Not a CONNECT: node:http takes the socket (the bytes already read are back in it). */
  http(socket: Socket): void;
  /** The head cannot be served: answer and close. */
  refuse(socket: Socket, code: 'bad_request' | 'request_header_too_large' | 'request_timeout', message: string): void;
}

export interface ConnectionStartLimits {
  readonly maxHeaderBytes: number;
  readonly headerTimeoutMs: number;
}

/** The pending header deadline of a socket handed to node:http, until `clearHeadDeadline`. */
const HEAD_DEADLINE = Symbol('head deadline');
/** Set once a connection is a tunnel (or about to be): it reads no more heads, so it has no deadline. */
const NO_MORE_HEADS = Symbol('no more heads');
type StartingSocket = Duplex & { [HEAD_DEADLINE]?: NodeJS.Timeout | undefined; [NO_MORE_HEADS]?: true };

/** The connection's first request head is complete (or the connection is gone): no deadline. */
export function clearHeadDeadline(socket: Duplex): void {
  const timer = (socket as StartingSocket)[HEAD_DEADLINE];
  if (timer !== undefined) {
    clearTimeout(timer);
    (socket as StartingSocket)[HEAD_DEADLINE] = undefined;
  }
}

/**
 * The connection read its last head (a CONNECT): clears the deadline and keeps `armHeadDeadline`
 * from arming another, so an earlier request answered later cannot put a 408 into the tunnel
 * (red-team F2).
 */
export function endHeadDeadlines(socket: Duplex): void {
  (socket as StartingSocket)[NO_MORE_HEADS] = true;
  clearHeadDeadline(socket);
}

/**
 * A kept-alive connection's next head must be complete within `ms` of the previous answer's end
 * (node:http's own header timer starts only at the head's first byte and is checked once a
 * period, so a trickled second head could hold the connection well past the limit). Cleared by
 * `clearHeadDeadline` when the head is complete; `expired` is told whether anything was sent
 * since (nothing: an idle connection, closed quietly; something: an unfinished head, 408).
 */
export function armHeadDeadline(socket: Socket, ms: number, expired: (socket: Socket, sentSomething: boolean) => void): void {
  if ((socket as StartingSocket)[NO_MORE_HEADS]) return;
  clearHeadDeadline(socket);
  const readBefore = socket.bytesRead;
  const timer = setTimeout(() => {
    (socket as StartingSocket)[HEAD_DEADLINE] = undefined;
    if (!socket.destroyed) expired(socket, socket.bytesRead > readBefore);
  }, ms);
  timer.unref();
  (socket as StartingSocket)[HEAD_DEADLINE] = timer;
}

export function readConnectionStart(socket: Socket, limits: ConnectionStartLimits, handlers: ConnectionStartHandlers): void {
  let buffered: Buffer | null = null;
  let connect = false;
  let searched = 0;
  const stop = () => {
    clearTimeout(timer);
    detach();
  };
  const detach = () => {
    socket.removeListener('readable', onReadable);
    socket.removeListener('end', drop);
    socket.removeListener('error', drop);
    socket.removeListener('close', stop);
  };
  // An error, or the client finishing before a whole head: there is no request to answer.
  const drop = () => {
    stop();
    socket.destroy();
  };
  const onReadable = () => {
    for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) {
      buffered = buffered === null ? chunk : Buffer.concat([buffered, chunk]);
    }
    if (buffered === null) return;
    if (!connect) {
      if (couldBeConnect(buffered)) return;
      if (!startsWithConnect(buffered)) {
        detach();
        (socket as StartingSocket)[HEAD_DEADLINE] = timer;
        socket.unshift(buffered);
        handlers.http(socket);
        return;
      }
      connect = true;
    }
    const head = parseConnectHead(buffered, limits.maxHeaderBytes, searched);
    searched = buffered.length;
    if (head.kind === 'incomplete') return;
    stop();
    if (head.kind === 'complete') handlers.connect(socket, head.target, head.rawHeaders, buffered.subarray(head.length));
    else if (head.kind === 'too_large')
      handlers.refuse(socket, 'request_header_too_large', `request headers exceed ${limits.maxHeaderBytes} bytes`);
    else handlers.refuse(socket, 'bad_request', `malformed request (${head.reason})`);
  };
  const timer = setTimeout(() => {
    stop();
    (socket as StartingSocket)[HEAD_DEADLINE] = undefined;
    if (!socket.destroyed) handlers.refuse(socket, 'request_timeout', 'request headers were not received in time');
  }, limits.headerTimeoutMs);
  socket.on('readable', onReadable);
  socket.on('end', drop);
  socket.on('error', drop);
  socket.on('close', stop);
}
