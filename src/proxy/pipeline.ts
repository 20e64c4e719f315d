/**
 * Pipelining on a plain-HTTP connection. node:http parses a whole read at once (a 64 KiB read
 * holds over a thousand small GETs) and emits every request in it; served as they come, one
 * connection could make the proxy decide and dial thousands of calls whose answers nobody reads,
 * and keep doing so after the client left (red-team F1).
 *
 * Threat: a client pipelining without reading. Scope: at most `PIPELINE_LIMIT` requests per
 * connection are served (admitted and unanswered) at a time; the rest wait, unadmitted (no
 * decision, no dial), while the socket is not read, and are dropped when the client goes.
 * Answers the client does not read stop the reading too (writableNeedDrain).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

/** Pipelined requests per connection admitted and not yet answered (README, "Connections and limits"). */
export const PIPELINE_LIMIT = 32;

/** One client connection's pipeline: requests in flight, and those read but not yet served. */
interface Pipeline {
  inFlight: number;
  readonly waiting: Array<[IncomingMessage, ServerResponse]>;
}
const PIPELINE = Symbol('pipeline');
type PipelinedSocket = Socket & { [PIPELINE]?: Pipeline };

export type Serve = (req: IncomingMessage, res: ServerResponse) => void;

/** A request node:http has read: served now, or queued behind the ones in flight on its connection. */
export function admitPipelined(req: IncomingMessage, res: ServerResponse, serve: Serve): void {
  const socket = req.socket as PipelinedSocket;
  let pipeline = socket[PIPELINE];
  if (pipeline === undefined) {
    const created: Pipeline = { inFlight: 0, waiting: [] };
    socket[PIPELINE] = pipeline = created;
    // Gone before their turn: never admitted, never dialled, no events.
    socket.once('close', () => (created.waiting.length = 0));
  }
  if (pipeline.inFlight >= PIPELINE_LIMIT || pipeline.waiting.length > 0 || socket.writableNeedDrain) {
    pipeline.waiting.push([req, res]);
    socket.pause();
    if (socket.writableNeedDrain) socket.once('drain', () => next(socket, pipeline, serve));
    return;
  }
  start(socket, pipeline, req, res, serve);
}

function start(socket: PipelinedSocket, pipeline: Pipeline, req: IncomingMessage, res: ServerResponse, serve: Serve): void {
  pipeline.inFlight++;
  res.once('close', () => {
    pipeline.inFlight--;
    next(socket, pipeline, serve);
  });
  serve(req, res);
}

/** Serves waiting requests while there is room, and reads the socket again once none wait. */
function next(socket: PipelinedSocket, pipeline: Pipeline, serve: Serve): void {
  if (socket.destroyed) return;
  while (pipeline.inFlight < PIPELINE_LIMIT && !socket.writableNeedDrain) {
    const waiting = pipeline.waiting.shift();
    if (waiting === undefined) {
      socket.resume();
      return;
    }
    start(socket, pipeline, waiting[0], waiting[1], serve);
  }
  if (socket.writableNeedDrain) socket.once('drain', () => next(socket, pipeline, serve));
}
