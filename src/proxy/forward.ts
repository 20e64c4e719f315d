/**
 * Plain HTTP in absolute form (`GET http://host/path`), one request at a time as node:http
 * hands them over: check the URL and that `Host` names the same authority, admit the call
 * (admission.ts), then forward it over a pinned keep-alive connection (pinned-pool.ts) and
 * stream the answer back. Each request is one call with its own decision and closed event.
 *
 * Threat: the guarded server picks the URL, the Host header and every other header; only the
 * vetted candidates are dialled, and the headers that describe one hop, name the proxy or carry
 * attribution are not passed on (headers.ts). How many pipelined requests of one connection are
 * served at a time is pipeline.ts's to say.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ProxyConfig } from '../config/proxy-config.js';
import { parseAbsoluteUrl, parseAuthority, sameAuthority } from '../net/destination.js';
import type { PinnedPool, UpstreamConnection } from '../net/pinned-pool.js';
import type { EndReason } from '../events/events.js';
import { answerAnnouncement, isAnnounceTarget } from './announce.js';
import { failure, sendAnswer } from './answers.js';
import type { Answer } from './answers.js';
import type { ActiveCall, Admission, Admitted, AdmissionResult } from './admission.js';
import { declaresBody, forwardRequestHeaders, forwardResponseHeaders } from './headers.js';

/** Answers whose connection the proxy cut for the client's bytes (server.ts onClientError). */
const CUT_FOR_CLIENT_ERROR = new WeakSet<ServerResponse>();

/** The connection of `res` is being cut for a protocol error of its client: its call ends `error`, not `client_closed`. */
export function cutForClientError(res: ServerResponse): void {
  CUT_FOR_CLIENT_ERROR.add(res);
}

export class PlainHttpPath {
  /** The attribution headers: read by the proxy, never forwarded. */
  private readonly dropHeaders: ReadonlySet<string>;

  constructor(
    private readonly admission: Admission,
    /** Keep-alive connections for plain HTTP, filed by the vetted IP (never by name). */
    private readonly pool: PinnedPool,
  ) {
    const { attribution } = admission.config;
    this.dropHeaders = new Set([attribution.toolHeader, attribution.callHeader, attribution.sessionHeader]);
  }

  /** A request node:http has read, served once pipeline.ts lets it through. */
  readonly accept = (req: IncomingMessage, res: ServerResponse): void => {
    void this.serve(req, res);
  };

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const admission = this.admission;
    const method = req.method ?? 'GET';
    // Origin form to the proxy itself: an announcement (announce.ts), not a call to forward.
    if (isAnnounceTarget(req.url ?? '')) {
      const status = await answerAnnouncement(req, res, { config: admission.config, history: admission.history });
      if (status !== 204)
        admission.observer?.failure?.(status === 400 ? 'bad_request' : status === 407 ? 'proxy_auth_required' : 'announce_not_trusted');
      return;
    }
    const url = parseAbsoluteUrl(req.url ?? '');
    if ('error' in url) {
      sendAnswer(res, admission.badRequest(admission.nextConnId(), url.error, null, method), true);
      req.resume();
      return;
    }
    const hostHeader = req.headers.host;
    if (hostHeader !== undefined) {
      const fromHost = parseAuthority(hostHeader, 80);
      if ('error' in fromHost || !sameAuthority(fromHost, url.target)) {
        const message = `Host header '${hostHeader}' names another authority than the request URL`;
        sendAnswer(res, admission.badRequest(admission.nextConnId(), message, url.target, method), true);
        req.resume();
        return;
      }
    }
    let result: AdmissionResult;
    try {
      result = await admission.admit(req.rawHeaders, req.socket.remoteAddress, url.target, method);
    } catch (err) {
      sendAnswer(res, admission.internalError(err, url.target), true);
      return;
    }
    if (!result.ok) {
      sendAnswer(res, result.answer, result.answer.status === 407 ? false : true);
      req.resume();
      return;
    }
    // The client left during the decision: nothing to forward, nobody to answer.
    if (req.socket.destroyed) {
      res.destroy();
      return;
    }
    const headers = ['host', hostHeader ?? url.authority, ...forwardRequestHeaders(req.rawHeaders, this.dropHeaders)];
    new Forward(admission, this.pool, result.admitted, req, res, headers, url.path).start();
  }
}

/** Where the request is being carried now, and that connection's socket counters when it began. */
interface Attempt {
  readonly conn: UpstreamConnection;
  readonly written0: number;
  readonly read0: number;
}

/**
 * One forwarded request: at most two attempts (a bodiless request whose reused connection the
 * upstream had already closed is sent once more on a fresh one), one end reason, one decision
 * line written before the client hears anything, and one closed event when the answer is done.
 */
class Forward implements ActiveCall {
  private readonly started = performance.now();
  private readonly limits: ProxyConfig['limits'];
  private readonly bodiless: boolean;
  /** Read by the pool's dial: set when the client left or shutdown aborted the call. */
  private readonly dialCancel = { aborted: false };
  private end: EndReason | null = null;
  private decisionLogged = false;
  /** The decision line's place in the pending batch: written before the client hears back. */
  private decisionTicket = 0;
  private bytesUp = 0;
  private bytesDown = 0;
  private current: Attempt | null = null;
  /** The closed event is written (once, whichever way the call ended). */
  private ended = false;
  /** The client has not taken the last chunk of the answer yet (writeAnswer). */
  private stalled = false;
  private stallTimer: NodeJS.Timeout | null = null;
  /** Checks a request body still coming in for progress (watchBody). */
  private bodyTimer: NodeJS.Timeout | null = null;
  private bodyBytesMark = 0;

  constructor(
    private readonly admission: Admission,
    private readonly pool: PinnedPool,
    private readonly a: Admitted,
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly headers: string[],
    private readonly path: string,
  ) {
    this.limits = admission.config.limits;
    this.bodiless = !declaresBody(req.headers);
  }

  start(): void {
    this.admission.active.add(this);
    this.req.on('error', () => this.abort('client_closed'));
    this.res.once('close', () => this.clientSideClosed());
    if (!this.bodiless && !this.req.complete) this.watchBody();
    this.run().catch((err: unknown) => this.answer('error', this.admission.internalError(err, this.a.target)));
  }

  abort(reason: EndReason): void {
    this.finish(reason);
    this.dialCancel.aborted = true;
    this.settle(false);
    // A response not yet given the socket (behind another on a pipelined connection) gets no
    // 'close' when destroyed: the call ends here, or it would never have its closed event.
    if (this.res.socket === null) this.clientSideClosed();
    this.res.destroy();
  }

  /** Takes a connection and sends; a second time only when the first attempt asks to retry. */
  private async run(): Promise<void> {
    const { a, pool, res } = this;
    for (let retry = false; ; retry = true) {
      let conn = retry ? null : pool.takeIdle(a.candidates, a.target.port);
      if (!conn) {
        try {
          conn = await pool.dial(a.candidates, a.target.port, this.limits.connectTimeoutMs, this.dialCancel);
        } catch (err) {
          this.logOnce(null);
          this.answer(res.destroyed ? 'client_closed' : 'error', this.admission.dialFailure(a, err));
          return;
        }
      }
      this.logOnce(conn.address.text);
      if (res.destroyed) {
        // The client left while we dialled: the connection is unused and can serve another call.
        pool.release(conn);
        return;
      }
      if ((await this.send(conn, retry)) === 'done') return;
    }
  }

  /** Sends the request on `conn` and streams the answer; settles `retry` when it should be sent again. */
  private send(conn: UpstreamConnection, retry: boolean): Promise<'done' | 'retry'> {
    const { a, res, limits } = this;
    this.current = { conn, written0: conn.socket.bytesWritten, read0: conn.socket.bytesRead };
    const reused = conn.uses > 0;
    return new Promise((settled) => {
      conn.client.dispatch(
        {
          path: this.path,
          method: a.method,
          headers: this.headers,
          body: this.bodiless ? null : this.req,
          headersTimeout: limits.tunnelIdleTimeoutMs,
          bodyTimeout: limits.tunnelIdleTimeoutMs,
        },
        {
          onConnect: () => {},
          onHeaders: (status, raw, resume, statusText) => {
            // Informational answers (103) are not forwarded; the final one follows.
            if (status < 200) return true;
            this.admission.events.ensureWritten(this.decisionTicket);
            res.writeHead(status, statusText, forwardResponseHeaders(latin1(raw)));
            res.on('drain', () => {
              this.stalled = false;
              resume();
            });
            return true;
          },
          onData: (chunk) => this.writeAnswer(chunk),
          onComplete: () => {
            this.finish('upstream_closed');
            this.settle(true);
            res.end();
            settled('done');
          },
          onError: (err: Error & { code?: string }) => {
            settled(this.failed(conn, err, retry, reused));
          },
        },
      );
    });
  }

  /** The attempt on `conn` failed: answer, or ask for one more attempt. */
  private failed(conn: UpstreamConnection, err: Error & { code?: string }, retry: boolean, reused: boolean): 'done' | 'retry' {
    const { a, res } = this;
    if (this.current?.conn !== conn) return 'done'; // already settled: the client went away
    this.settle(false);
    const where = `${a.target.host.host}:${a.target.port}`;
    if (res.headersSent || res.destroyed) {
      this.finish(err.code === 'UND_ERR_BODY_TIMEOUT' ? 'idle_timeout' : 'error');
      res.destroy();
    } else if (err.code === 'UND_ERR_HEADERS_TIMEOUT') {
      this.admission.observer?.failure?.('upstream_timeout');
      this.answer(
        'idle_timeout',
        failure('upstream_timeout', `${where} did not answer in time`, this.admission.labelFor(a.target, a.call)),
      );
    } else if (err.code === 'UND_ERR_INVALID_ARG') {
      this.answer('error', this.admission.badRequest(a.connId, `the request cannot be forwarded: ${err.message}`, a.target, a.method));
    } else if (!retry && reused && this.bodiless) {
      // The connection failed before any answer: most likely closed while idle.
      return 'retry';
    } else {
      this.admission.observer?.failure?.('upstream_unreachable');
      const message = `${where} closed the connection before answering`;
      this.answer('error', failure('upstream_unreachable', message, this.admission.labelFor(a.target, a.call)));
    }
    return 'done';
  }

  /**
   * Writes a chunk of the answer. A client that stops reading would otherwise hold the call, its
   * connection and what was read for it for good (undici's body timeout stops while paused; red
   * team 29: 150 s and counting): after `tunnel_idle_timeout_ms` without the answer draining, the
   * call ends `idle_timeout`, as an idle tunnel does. One timer per call, re-armed per stall.
   */
  private writeAnswer(chunk: Buffer): boolean {
    if (this.res.write(chunk)) return true;
    this.stalled = true;
    if (this.stallTimer === null) this.stallTimer = setTimeout(this.onStalled, this.limits.tunnelIdleTimeoutMs).unref();
    else this.stallTimer.refresh();
    return false;
  }

  private readonly onStalled = (): void => {
    if (!this.stalled || this.res.destroyed) return;
    this.finish('idle_timeout');
    this.res.destroy();
  };

  /**
   * A request body that stops coming in is cut after `tunnel_idle_timeout_ms` without a byte moving
   * on the client's connection or the upstream one, either way (`idle_timeout`), as an idle tunnel
   * is: undici's timers start only once the body is sent, so a client that sent a head and part
   * of its body, then nothing, held its connection and one upstream connection for good (red team
   * 30). The upstream side counts: an upstream slowly taking what the buffers hold leaves the
   * client's side still (red team 31). Polled once a period from the sockets' byte counts, so the
   * body stream is not touched.
   */
  private watchBody(): void {
    this.bodyBytesMark = this.movedBytes();
    this.bodyTimer = setTimeout(this.onBodyCheck, this.limits.tunnelIdleTimeoutMs).unref();
  }

  private readonly onBodyCheck = (): void => {
    if (this.ended || this.req.complete) return;
    const bytes = this.movedBytes();
    if (bytes !== this.bodyBytesMark) {
      this.bodyBytesMark = bytes;
      this.bodyTimer?.refresh();
      return;
    }
    this.finish('idle_timeout');
    this.res.destroy();
  };

  private movedBytes(): number {
    const client = this.req.socket;
    const upstream = this.current?.conn.socket;
    return client.bytesRead + client.bytesWritten + (upstream ? upstream.bytesRead + upstream.bytesWritten : 0);
  }

  private finish(reason: EndReason): void {
    if (this.end === null) this.end = reason;
  }

  /** Done with the current connection: count its bytes, and give it back to the pool or drop it. */
  private settle(reuse: boolean): void {
    if (!this.current) return;
    const { conn, written0, read0 } = this.current;
    this.current = null;
    this.bytesUp = conn.socket.bytesWritten - written0;
    this.bytesDown = conn.socket.bytesRead - read0;
    if (reuse) this.pool.release(conn);
    else this.pool.discard(conn);
  }

  private logOnce(pinned: string | null): void {
    if (this.decisionLogged) return;
    this.decisionLogged = true;
    // Deferred when dispatched: written with others before anything of the answer goes back.
    this.decisionTicket = this.admission.logDecision(this.a, pinned, undefined, pinned !== null);
  }

  private answer(reason: EndReason, failed: Answer): void {
    this.admission.events.ensureWritten(this.decisionTicket);
    this.finish(reason);
    if (!this.res.destroyed && !this.res.headersSent) sendAnswer(this.res, failed, true);
    else this.res.destroy();
  }

  private clientSideClosed(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.stallTimer !== null) clearTimeout(this.stallTimer);
    if (this.bodyTimer !== null) clearTimeout(this.bodyTimer);
    if (!this.res.writableFinished) {
      this.finish(CUT_FOR_CLIENT_ERROR.has(this.res) ? 'error' : 'client_closed');
      this.dialCancel.aborted = true;
      this.settle(false);
    }
    this.admission.active.delete(this);
    this.admission.closedEvent(this.a.connId, this.bytesUp, this.bytesDown, this.started, this.end ?? 'upstream_closed', false);
  }
}

/** undici hands header lines over as bytes; the client gets them back byte for byte. */
function latin1(raw: readonly Buffer[]): string[] {
  const out = new Array<string>(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = (raw[i] as Buffer).toString('latin1');
  return out;
}
