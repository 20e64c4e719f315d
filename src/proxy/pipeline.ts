/**
 * Pipelining on a plain-HTTP connection. node:http parses a whole read at once (a 64 KiB read
 * holds over a thousand small GETs) and emits every request in it; served as they come, one
 * connection could make the proxy decide and dial thousands of calls whose answers nobody reads,
 * and keep doing so after the client left (red-team F1).
 *
 * Threat: a client pipelining without reading. Scope: one request per connection is served
 * (admitted and unanswered) at a time, as Squid does by default (`pipeline_prefetch 0`); the rest
 * wait, unadmitted (no decision, no dial), within WAITING_LIMIT and WAITING_HEAD_BYTES, and are dropped when the
 * client goes. A body waiting its turn is left in the socket (holdReads). Answers the client does
 * not read stop the reading too (writableNeedDrain).
 *
 * Why one (red team 28; it was 32): an answer queued behind another holds what the upstream sent
 * (its high-water mark and a read), so 32 answers to large downloads held ~4 MiB per connection
 * that never read (300 connections took the proxy from 74 to 488 MiB); and a request admitted
 * while an earlier one was still being refused was forwarded, body and all, after the proxy had
 * decided to close the connection. One at a time, each answer owns the socket (backpressure
 * holds it to one read), and a request is only admitted once the answer before it is done: after
 * an answer that closes the connection (a refusal, `Connection: close`) none is.
 *
 * A CONNECT pipelined behind requests still unanswered (red-team F1/F2) waits here too, as the
 * connection's last entry: it is served once every earlier request is answered, so no answer of
 * theirs can land in the tunnel (an Upgrade head, refused, waits the same way so its 400 comes
 * after them). Waiting rather than refusing: pipelining before a CONNECT is legal HTTP/1.1,
 * and a refusal would need the same wait for the earlier answers anyway. While it waits the
 * socket is read for the client leaving (admitLastHead).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { declaresBody } from './headers.js';

/**
 * Pipelined requests per connection admitted and not yet answered (README, "Connections and
 * limits"). At 1 every answer being served holds the socket, so node:http closes it when the
 * client leaves; above 1 an answer queued behind another never gets the socket and nothing
 * closes it (red team 27: its call stayed open for good; the test in pipeline.test.ts fails).
 */
export const PIPELINE_LIMIT = 1;

/**
 * Requests node:http may have read behind the one being served before the connection is closed,
 * and the bytes their heads may come to together (one waiting alone may be as large as
 * `max_header_bytes`).
 * The socket stays read while bodiless requests wait (so a client that leaves is seen), and one
 * read can hold over a thousand small requests, each a request and a response object: unbounded,
 * one connection took 37 MB of GETs into 1 GB of RSS and seconds of CPU to drop them (red team
 * 30); 32 waiting 15 KB heads were 560 KB a connection (red team 31). No client we know
 * pipelines (curl, undici, the proxy agents, requests, browsers); these leave room for one that
 * does.
 */
export const WAITING_LIMIT = 8;
export const WAITING_HEAD_BYTES = 32 * 1024;

/** One client connection's pipeline: requests in flight, those read but not yet served, and a CONNECT after them. */
interface Pipeline {
  /** Requests admitted and not yet answered (their responses not closed). */
  readonly inFlight: Set<IncomingMessage>;
  /** Each with its head's bytes (headBytes), counted once. */
  readonly waiting: Array<[IncomingMessage, ServerResponse, number]>;
  /** The head bytes of those waiting, together. */
  waitingHeadBytes: number;
  /** Serves the CONNECT (or Upgrade) node:http read after the requests above: nothing is read after it. */
  lastHead: (() => void) | null;
}
const PIPELINE = Symbol('pipeline');
type PipelinedSocket = Socket & { [PIPELINE]?: Pipeline };

export type Serve = (req: IncomingMessage, res: ServerResponse) => void;

/** A request node:http has read: served now, or queued behind the ones in flight on its connection. */
export function admitPipelined(req: IncomingMessage, res: ServerResponse, serve: Serve): void {
  const socket = req.socket as PipelinedSocket;
  let pipeline = socket[PIPELINE];
  if (pipeline === undefined) {
    const created: Pipeline = { inFlight: new Set(), waiting: [], waitingHeadBytes: 0, lastHead: null };
    socket[PIPELINE] = pipeline = created;
    socket.once('close', () => {
      // Gone before their turn: never admitted, never dialled, no events.
      created.waiting.length = 0;
      created.waitingHeadBytes = 0;
      created.lastHead = null;
      // Those in flight end as node:http ends them when a client leaves (its abortIncoming), which
      // it no longer does once it has handed the socket over for a CONNECT behind them: else their
      // upstream requests would stay open until the upstream answers (red team).
      for (const req of created.inFlight) {
        if (!req.destroyed) req.destroy(clientLeft());
      }
    });
  }
  if (pipeline.inFlight.size >= PIPELINE_LIMIT || pipeline.waiting.length > 0 || socket.writableNeedDrain || socket.writableEnded) {
    if (socket.destroyed) return; // node:http aborts it with the rest
    const bytes = headBytes(req);
    if (
      pipeline.waiting.length >= WAITING_LIMIT ||
      (pipeline.waiting.length > 0 && pipeline.waitingHeadBytes + bytes > WAITING_HEAD_BYTES)
    ) {
      socket.destroy();
      return;
    }
    pipeline.waiting.push([req, res, bytes]);
    pipeline.waitingHeadBytes += bytes;
    socket.pause();
    // A body waiting its turn stays in the socket. Bodiless requests leave it read, so a client
    // that leaves is seen at once (its FIN) and node:http's parsing ends at WAITING_LIMIT.
    if (declaresBody(req.headers)) holdReads(socket);
    if (socket.writableNeedDrain) socket.once('drain', () => next(socket, pipeline, serve));
    return;
  }
  start(socket, pipeline, req, res, serve);
}

/**
 * What a client may send after a waiting CONNECT's head (its first tunnel bytes, kept for the
 * tunnel); more closes the connection. Held in the proxy's memory for every waiting connection
 * (at `max_connections` 10,000, 16 KiB each is 160 MiB at most), so about one TLS record.
 */
export const EARLY_BYTES_LIMIT = 16 * 1024;

/**
 * A CONNECT (or Upgrade) head node:http read on a kept-alive connection, after which node:http
 * lets go of the socket: served now if every request before it is answered, otherwise once the
 * last of them is. `serve` gets what the client sent after the head meanwhile (`alreadyRead`:
 * what node:http had read past the head, handed over with it).
 *
 * While it waits the socket is read (at most `EARLY_BYTES_LIMIT`, kept for the tunnel): a socket
 * nobody reads never reports the client's FIN or reset, so a client could pipeline a request to
 * a slow upstream and a CONNECT, leave, and hold its connection slot until the upstream timeout
 * (red team, found after the wait was added). A client that finishes sending (FIN) or resets
 * before its CONNECT is served has left: the socket is closed, which aborts the requests before
 * it as node:http does on a FIN, and the CONNECT is dropped undecided. So is a CONNECT behind an
 * answer that closed the connection (`Connection: close`).
 */
export function admitLastHead(socket: Socket, alreadyRead: number, serve: (early: Buffer) => void): void {
  const pipeline = (socket as PipelinedSocket)[PIPELINE];
  releaseReads(socket);
  if (pipeline === undefined || (pipeline.inFlight.size === 0 && pipeline.waiting.length === 0)) {
    readAgain(socket);
    serve(EMPTY);
    return;
  }
  // No client sends that much before its 200 (a TLS hello is a few KiB). Left unread instead,
  // the socket would stop telling when the client leaves, and the slot would be held again.
  // What node:http read past the head counts too (red team: uncounted, the bound was one read more),
  // and may be over the limit already.
  if (alreadyRead > EARLY_BYTES_LIMIT) {
    socket.destroy();
    return;
  }
  const early: Buffer[] = [];
  let earlyBytes = alreadyRead;
  const onReadable = () => {
    for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) {
      early.push(chunk);
      earlyBytes += chunk.length;
    }
    if (earlyBytes > EARLY_BYTES_LIMIT) socket.destroy();
  };
  const left = () => socket.destroy();
  socket.on('readable', onReadable);
  socket.once('end', left);
  readAgain(socket);
  pipeline.lastHead = () => {
    socket.removeListener('readable', onReadable);
    socket.removeListener('end', left);
    if (socket.destroyed || socket.writableEnded) {
      socket.destroy();
      return;
    }
    serve(early.length === 0 ? EMPTY : Buffer.concat(early));
  };
}

const EMPTY = Buffer.alloc(0);

/** The error node:http gives the requests of a connection the client closed. */
function clientLeft(): NodeJS.ErrnoException {
  const err: NodeJS.ErrnoException = new Error('aborted');
  err.code = 'ECONNRESET';
  return err;
}

type StreamHandle = { reading: boolean; readStart(): number; readStop(): number };

/** Set on a handle whose reads holdReads stopped. */
const HELD = Symbol('reads held');
type HoldableHandle = StreamHandle & { [HELD]?: boolean };

function handleOf(socket: Socket): HoldableHandle | null {
  return (socket as Socket & { _handle?: HoldableHandle | null })._handle ?? null;
}

/**
 * Stops reading the socket while a request body waits to be served, whoever asks to read
 * meanwhile. A pause alone did not hold (red team 30): node:http reads the socket natively and
 * starts the handle again as it sees fit, so the body of a POST waiting behind a slow answer went
 * into memory as fast as the client sent it (600 MB in 7 s). The handle's `readStart` is
 * shadowed by a no-op until `releaseReads`, which starts it again if node:http wants it reading
 * by then (its `reading` flag). While held, a client that leaves is seen only once the answer
 * being served ends, as with any request body the upstream does not take.
 */
function holdReads(socket: Socket): void {
  const handle = handleOf(socket);
  if (handle === null || handle[HELD] === true) return;
  handle[HELD] = true;
  handle.readStop();
  handle.readStart = heldReadStart;
}

/** About what a request head took on the wire: its target and header lines. */
function headBytes(req: IncomingMessage): number {
  let bytes = (req.url ?? '').length;
  for (const field of req.rawHeaders) bytes += field.length + 2;
  return bytes;
}

function heldReadStart(): number {
  return 0;
}

/** Undoes holdReads: the handle's own `readStart` again, and called if node:http wants reading. */
function releaseReads(socket: Socket): void {
  const handle = handleOf(socket);
  if (handle === null || handle[HELD] !== true) return;
  handle[HELD] = false;
  delete (handle as Partial<StreamHandle>).readStart;
  if (handle.reading && !socket.destroyed) handle.readStart();
}

/**
 * Restarts reading a socket node:http let go of. While node:http read it natively, a pause of
 * ours (above) stopped the handle through node:http's own 'pause' listener; node:http took its
 * 'resume' listener off with the socket, and the stream still counts a read as pending, so no
 * `resume()` starts the handle again: the tunnel would never hear the client. This does what
 * that listener did. Unread bytes then wait in the stream's buffer (up to its high-water mark)
 * until the tunnel relays them.
 */
function readAgain(socket: Socket): void {
  const handle = handleOf(socket);
  if (handle && !handle.reading && !socket.destroyed) {
    handle.reading = true;
    handle.readStart();
  }
}

function start(socket: PipelinedSocket, pipeline: Pipeline, req: IncomingMessage, res: ServerResponse, serve: Serve): void {
  pipeline.inFlight.add(req);
  res.once('close', () => {
    pipeline.inFlight.delete(req);
    next(socket, pipeline, serve);
  });
  serve(req, res);
}

/** Serves waiting requests while there is room, and reads the socket again once none wait. */
function next(socket: PipelinedSocket, pipeline: Pipeline, serve: Serve): void {
  // Ended: the last answer closed the connection; what waits is dropped with it, undecided.
  if (socket.destroyed || socket.writableEnded) return;
  while (pipeline.inFlight.size < PIPELINE_LIMIT && !socket.writableNeedDrain) {
    const waiting = pipeline.waiting.shift();
    if (waiting !== undefined) pipeline.waitingHeadBytes -= waiting[2];
    // None left waiting: the socket is read again (the body of the request served now may be
    // still to come).
    if (pipeline.waiting.length === 0 && pipeline.lastHead === null) releaseReads(socket);
    if (waiting === undefined) {
      if (pipeline.lastHead === null) socket.resume();
      else if (pipeline.inFlight.size === 0) {
        const serveLast = pipeline.lastHead;
        pipeline.lastHead = null;
        serveLast();
      }
      return;
    }
    start(socket, pipeline, waiting[0], waiting[1], serve);
  }
  if (socket.writableNeedDrain) socket.once('drain', () => next(socket, pipeline, serve));
}
