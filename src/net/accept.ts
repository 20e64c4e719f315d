/**
 * Accepted sockets built the way pinned-dial.ts builds dialled ones: with every option that
 * net.Socket's constructor would add already present.
 *
 * Why: the constructor copies its options (`{ ...options }`) and then adds `emitClose`,
 * `autoDestroy` and `decodeStrings`. In Node 20's V8 (11.3) a property added to a spread copy
 * builds a new hidden class for each copy, so every accepted socket made new maps, and every
 * property cache that then read its options (Duplex, ReadableState, WritableState) missed and
 * went to V8's runtime. Node's `net.Server` makes accepted sockets in its listening handle's
 * `onconnection`, from a literal without those keys. Measured on the peer bench's S2 after its
 * S4 and S1 (perf, proxy on its own core): the node binary's share fell from 277 to 206 µs per
 * tunnel (stub-cache and lookup-iterator misses gone from the Socket constructor), and the
 * process's CPU per tunnel from 545–570 to 446–489 µs.
 *
 * What: the handle's `onconnection` is replaced by one that passes the full options and
 * otherwise does what Node 20's does (count the connection, set `server`, apply `noDelay`, emit
 * 'connection', publish to `net.server.socket`). Scope: only that common case. An accept error,
 * a `maxConnections` limit or `keepAlive` go to Node's own function unchanged; on another Node
 * major, or a handle that does not look like Node 20's (no `onconnection`, no connection count),
 * Node's own is left in place.
 */
import { channel } from 'node:diagnostics_channel';
import { Socket } from 'node:net';
import type { Server } from 'node:net';

const serverSocketChannel = channel('net.server.socket');
const INSTALLED = Symbol('accepts with full options');

/** What Node 20's listening TCP handle and server hold that this uses (internal, checked at install). */
interface ListeningHandle {
  onconnection: (this: ListeningHandle, err: number, clientHandle: unknown) => void;
  [INSTALLED]?: true;
}
interface NodeServerInternals {
  _handle: ListeningHandle | null;
  _connections: number;
  allowHalfOpen?: boolean;
  pauseOnConnect?: boolean;
  highWaterMark?: number;
  noDelay?: boolean;
  keepAlive?: boolean;
}

/**
 * Makes `server` build its accepted sockets with full options from now on (call it once it is
 * listening; again after each `listen`). Returns whether it did: false leaves Node's own.
 */
export function acceptWithFullOptions(server: Server, nodeVersion = process.versions.node): boolean {
  // What this copies is Node 20's function; a later one may do more (Node 22 checks a blockList).
  if (nodeVersion.split('.')[0] !== '20') return false;
  const internals = server as unknown as NodeServerInternals;
  const handle = internals._handle;
  if (handle === null || typeof handle !== 'object' || typeof handle.onconnection !== 'function') return false;
  if (typeof internals._connections !== 'number') return false;
  if (handle[INSTALLED]) return true;
  const nodeOnConnection = handle.onconnection;
  handle.onconnection = function onconnection(this: ListeningHandle, err: number, clientHandle: unknown): void {
    const limit = server.maxConnections;
    if (err || (limit && internals._connections >= limit) || internals.keepAlive) {
      nodeOnConnection.call(this, err, clientHandle);
      return;
    }
    const options = {
      handle: clientHandle,
      allowHalfOpen: internals.allowHalfOpen,
      pauseOnCreate: internals.pauseOnConnect,
      readable: true,
      writable: true,
      readableHighWaterMark: internals.highWaterMark,
      writableHighWaterMark: internals.highWaterMark,
      // What the constructor sets (net.js), so it has nothing to add.
      emitClose: false,
      autoDestroy: true,
      decodeStrings: false,
    };
    const socket = new Socket(options);
    // As Node's: the flag and the handle's TCP_NODELAY, through the public method.
    if (internals.noDelay) socket.setNoDelay(true);
    internals._connections++;
    const owned = socket as Socket & { server: Server; _server: Server };
    owned.server = server;
    owned._server = server;
    server.emit('connection', socket);
    if (serverSocketChannel.hasSubscribers) serverSocketChannel.publish({ socket });
  };
  handle[INSTALLED] = true;
  return true;
}

/** Whether `server`'s listening handle builds accepted sockets here (for its owner's tests). */
export function acceptsWithFullOptions(server: Server): boolean {
  return (server as unknown as NodeServerInternals)._handle?.[INSTALLED] === true;
}

/** How often a listener that keeps failing to accept is reported (the count of the rest goes with it). */
export const ACCEPT_ERROR_REPORT_MS = 1_000;
/** How long accepting may fail in a row without the event loop turning before the process gives up. */
export const ACCEPT_STUCK_MS = 1_000;
/** Failures further apart than this are not libuv retrying the same connection. */
export const ACCEPT_RETRY_GAP_MS = 100;

export interface AcceptFailureHandlers {
  /** A failure, at most once per `ACCEPT_ERROR_REPORT_MS`; `notReported` failed since the last report. */
  report(err: NodeJS.ErrnoException, notReported: number): void;
  /**
   * Accepting has failed in a row for `ACCEPT_STUCK_MS` without the event loop turning: libuv is
   * retrying the same queued connection in a loop (see below). The caller ends the process.
   */
  stuck(err: NodeJS.ErrnoException, failures: number, ms: number): void;
}

/**
 * Keeps `server` serving when accepting a connection fails after it is listening, reporting the
 * failures (at most once per `ACCEPT_ERROR_REPORT_MS`, with how many were not), and says when
 * accepting is stuck.
 *
 * Why: Node emits an accept failure that libuv passes on (ENOBUFS, ENOMEM under kernel memory
 * pressure; EMFILE and ENFILE when libuv's reserve descriptor is gone) as 'error' on the server,
 * and an 'error' with no listener is an uncaught exception: a passing shortage of kernel memory
 * ended the proxy and every tunnel through it.
 *
 * Scope: libuv retries at once after each failure, in the same loop, until accept(2) succeeds or
 * has nothing queued, and Linux allocates before it dequeues, so the same connection fails again
 * while the shortage lasts, and the event loop does nothing else meanwhile. A short shortage is
 * survived that way; a lasting one (descriptors exhausted, which nothing can free while the loop
 * is held) would leave a process alive and serving nothing. So failures in a row (no
 * `setImmediate` run, no connection accepted, none more than `ACCEPT_RETRY_GAP_MS` apart) that
 * go on for `ACCEPT_STUCK_MS` go to `stuck`, and the caller exits for its supervisor to restart
 * it: a fresh process has its descriptors back, where this one cannot close any while the loop
 * is held.
 *
 * Returns a function that reports the failures held back at once (the caller's shutdown: the
 * timer that would report them is unref'd and dies with the process).
 */
export function reportAcceptErrors(
  server: Server,
  handlers: AcceptFailureHandlers,
  now: () => number = () => performance.now(),
): () => void {
  let reportedAt = -Infinity;
  let notReported = 0;
  let lastSuppressed: NodeJS.ErrnoException | null = null;
  let flushTimer: NodeJS.Timeout | null = null;
  /**
   * The failures in a row: since the event loop last turned, with no connection accepted between
   * them and none more than ACCEPT_RETRY_GAP_MS after the one before (libuv's retries are
   * microseconds apart).
   */
  let burstFrom: number | null = null;
  let burstFailures = 0;
  let lastFailureAt = -Infinity;
  let turnPending = false;
  const endBurst = () => {
    burstFrom = null;
    burstFailures = 0;
  };
  const loopTurned = () => {
    turnPending = false;
    endBurst();
  };
  server.on('connection', endBurst);
  server.on('drop', endBurst);
  // A count left over when the failures stop goes out a period after the last line, with the last of them.
  const flushSuppressed = () => {
    flushTimer = null;
    if (lastSuppressed === null) return;
    const err = lastSuppressed;
    const count = notReported - 1;
    lastSuppressed = null;
    notReported = 0;
    reportedAt = now();
    handlers.report(err, count);
  };
  const reportHeldBack = () => {
    if (flushTimer !== null) clearTimeout(flushTimer);
    flushSuppressed();
  };
  server.on('error', (err: NodeJS.ErrnoException) => {
    const at = now();
    if (burstFrom === null || at - lastFailureAt > ACCEPT_RETRY_GAP_MS) {
      burstFrom = at;
      burstFailures = 0;
      if (!turnPending) {
        turnPending = true;
        setImmediate(loopTurned);
      }
    }
    lastFailureAt = at;
    burstFailures++;
    if (at - burstFrom >= ACCEPT_STUCK_MS) {
      const failures = burstFailures;
      const ms = at - burstFrom;
      endBurst();
      handlers.stuck(err, failures, ms);
      return;
    }
    if (at - reportedAt < ACCEPT_ERROR_REPORT_MS) {
      notReported++;
      lastSuppressed = err;
      flushTimer ??= setTimeout(flushSuppressed, reportedAt + ACCEPT_ERROR_REPORT_MS - at).unref();
      return;
    }
    if (flushTimer !== null) clearTimeout(flushTimer);
    flushTimer = null;
    reportedAt = at;
    const count = notReported;
    notReported = 0;
    lastSuppressed = null;
    handlers.report(err, count);
  });
  return reportHeldBack;
}
