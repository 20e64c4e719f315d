/**
 * The data path: CONNECT tunnels and absolute-form plain HTTP on one listener. A connection
 * that opens with CONNECT is read by connection-start.ts and connect-head.ts; every other one
 * (and a CONNECT later on a kept-alive connection) by `node:http`.
 *
 * Every call (each CONNECT, each request on a kept-alive connection) is admitted the same way:
 * client identity, attribution, one policy generation, one decision (no DNS for a name refused
 * by name; one resolution otherwise), then a pinned dial to the vetted candidates only. A
 * refusal is answered before anything is forwarded (on CONNECT, before any `200`). Each call has
 * its own `conn_id`, decision event and closed event with its own byte counts.
 *
 * Written on `node:http` rather than proxy-chain: proxy-chain gives no answer on a failed CONNECT
 * dial, counts bytes per client socket rather than per request, forwards `Proxy-Connection` and
 * a Host that names another authority, and pins only through a `lookup` callback (README,
 * "Why not proxy-chain"; the benchmark keeps it as the baseline row).
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { ProxyConfig } from '../config/proxy-config.js';
import { attribute } from '../attribution/attribute.js';
import type { Attribution } from '../attribution/attribute.js';
import { identify } from '../attribution/identity.js';
import type { AttributionResult } from '../attribution/attribute.js';
import type { CallStore, DiscoveredLog } from '../state/types.js';
import { canonicalHost } from '../net/address.js';
import type { IpAddress } from '../net/address.js';
import { createBaseline } from '../net/baseline.js';
import { parseAbsoluteUrl, parseAuthority, sameAuthority } from '../net/destination.js';
import type { Target } from '../net/destination.js';
import { PinnedPool } from '../net/pinned-pool.js';
import type { UpstreamConnection } from '../net/pinned-pool.js';
import { DialError, pinnedDial } from '../net/pinned-dial.js';
import type { PinnedConnection } from '../net/pinned-dial.js';
import type { NameResolver } from '../net/resolve.js';
import { canonicalListeners, createSelfCheck } from '../net/self.js';
import type { Listener } from '../net/self.js';
import type { Decision, HistoryCall } from '../policy/types.js';
import { destroyWhenFlushed, failure, refusal, sendAnswer, sendRawAnswer } from './answers.js';
import type { Answer, CallLabel, ErrorCode } from './answers.js';
import { clearHeadDeadline, readConnectionStart } from './connection-start.js';
import type { ConnectionStartHandlers, ConnectionStartLimits } from './connection-start.js';
import { decideCall } from '../decide/decide-call.js';
import type { EndReason, EventSink } from '../events/events.js';
import { forwardRequestHeaders, forwardResponseHeaders } from './headers.js';
import type { PolicyStore } from '../live/policy-store.js';
import { Tunnel } from './tunnel.js';
import type { TunnelOwner } from './tunnel.js';

export interface ProxyServerOptions {
  readonly config: ProxyConfig;
  readonly store: PolicyStore;
  readonly resolver: NameResolver;
  readonly registry: CallStore;
  readonly events: EventSink;
  readonly discovered: DiscoveredLog;
  /** Other sockets of this process the proxy must never dial (the admin listener). */
  readonly otherListeners?: () => ReadonlyArray<{ address: string; port: number }>;
  /** Observes every finished decision and closed call (metrics). */
  readonly observer?: ProxyObserver;
}

export interface ProxyObserver {
  decision?(decision: Decision, method: string): void;
  closed?(bytesUp: number, bytesDown: number, end: EndReason, tunnel: boolean): void;
  dns?(durationMs: number): void;
  failure?(code: string): void;
  tunnels?(open: number): void;
}

/** A call that was admitted: who, under which policy generation, and what was decided. */
interface Admitted {
  readonly connId: string;
  readonly client: string;
  /** What `max_tunnels_per_client` counts by (identity.ts): the user, or without users the source address. */
  readonly limitKey: string;
  readonly call: Attribution;
  readonly generation: number;
  /** The first 12 hex digits of the serving policy's sha256 (`policy_digest`). */
  readonly digest: string;
  readonly decision: Decision;
  readonly candidates: readonly IpAddress[];
  readonly target: Target;
  readonly method: string;
}

type Admission = { readonly ok: true; readonly admitted: Admitted } | { readonly ok: false; readonly answer: Answer };

interface ActiveCall {
  abort(reason: EndReason): void;
}

/** Until the session-history store feeds decisions: one shared empty history, not an array per call. */
const NO_HISTORY: readonly HistoryCall[] = Object.freeze([]);
/** node:http keeps an idle connection this long past its `keepAliveTimeout` (Node 20). */
const NODE_KEEP_ALIVE_BUFFER_MS = 1_000;

export class ProxyServer implements TunnelOwner {
  readonly server: Server;
  private readonly active = new Set<ActiveCall>();
  private readonly tunnelsByClient = new Map<string, number>();
  private openTunnels = 0;
  /** Every client connection, whoever reads it (closed after the grace period on shutdown). */
  private readonly sockets = new Set<Socket>();
  private readonly connPrefix = randomBytes(4).toString('hex');
  private connCounter = 0;
  private readonly classify: (ip: IpAddress, port: number) => string | null;
  private listenersCache: ReadonlyArray<Listener> | null = null;
  private readonly dropHeaders: ReadonlySet<string>;
  /** Keep-alive connections for plain HTTP, filed by the vetted IP (never by name). */
  private readonly pool = new PinnedPool();

  constructor(private readonly options: ProxyServerOptions) {
    const { config } = options;
    this.dropHeaders = new Set([config.attribution.toolHeader, config.attribution.callHeader, config.attribution.sessionHeader]);
    this.classify = createBaseline({ allowCidrs: config.baseline.allowCidrs, isSelf: createSelfCheck({ listeners: () => this.selfListeners() }) });
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
    // node:http's own connection listener runs only for connections that do not open with
    // CONNECT (connection-start.ts); it is taken off the event and called from there.
    const httpListeners = this.server.listeners('connection');
    if (httpListeners.length !== 1) throw new Error(`node:http registered ${httpListeners.length} connection listeners; expected 1`);
    const httpConnection = httpListeners[0] as (socket: Socket) => void;
    this.server.removeListener('connection', httpConnection);
    this.startLimits = { maxHeaderBytes: config.limits.maxHeaderBytes, headerTimeoutMs: config.limits.headerTimeoutMs };
    this.startHandlers = {
      connect: (socket, target, rawHeaders, rest) => void this.onConnect(target, rawHeaders, socket, rest),
      http: (socket) => httpConnection.call(this.server, socket),
      refuse: (socket, code, message) => this.refuseHead(socket, code, message),
    };
    const sockets = this.sockets;
    this.connectionClosed = function (this: Socket) {
      sockets.delete(this);
      clearHeadDeadline(this);
    };
    this.server.on('connection', (socket: Socket) => this.onConnection(socket));
    this.server.on('request', (req: IncomingMessage, res: ServerResponse) => void this.onRequest(req, res));
    this.server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => void this.onConnect(req.url ?? '', req.rawHeaders, socket as Socket, head));
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex) => {
      sendRawAnswer(socket, failure('bad_request', 'protocol upgrades are not proxied in absolute form; use CONNECT', this.labelFor(null)));
    });
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.onClientError(err, socket));
  }

  listen(host: string, port: number): Promise<{ address: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host, port }, () => {
        this.server.removeListener('error', reject);
        const addr = this.server.address() as { address: string; port: number };
        resolve({ address: addr.address, port: addr.port });
      });
    });
  }

  get address(): { address: string; port: number } | null {
    const addr = this.server.address();
    return addr && typeof addr === 'object' ? { address: addr.address, port: addr.port } : null;
  }

  get activeCalls(): number {
    return this.active.size;
  }

  /**
   * Stops accepting, lets open calls finish for `graceMs`, then ends the rest (`shutdown`).
   */
  async close(graceMs: number): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    const deadline = Date.now() + graceMs;
    while (this.active.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 25));
      this.server.closeIdleConnections();
    }
    for (const call of [...this.active]) call.abort('shutdown');
    this.server.closeAllConnections();
    // Connections node:http does not track: CONNECT heads being read, admitted or dialled.
    for (const socket of [...this.sockets]) socket.destroy();
    this.pool.destroy();
    await closed;
  }

  // ---- admission: identity, attribution, decision ----

  private nextConnId(): string {
    return `${this.connPrefix}-${(++this.connCounter).toString(36)}`;
  }

  private labelFor(target: Target | null, call?: Attribution): CallLabel {
    return { tool: call?.tool ?? null, callId: call?.callId ?? null, host: target?.host.host ?? null, port: target?.port ?? null };
  }

  private async admit(raw: readonly string[], remoteAddress: string | undefined, target: Target, method: string): Promise<Admission> {
    const { config, events } = this.options;
    const connId = this.nextConnId();
    // A scan of the raw list: cheaper than building req.headersDistinct for a few names.
    const headerValues = (name: string) => {
      let values: string[] | undefined;
      for (let i = 0; i < raw.length; i += 2) {
        const key = raw[i] as string;
        if (key.length === name.length && key.toLowerCase() === name) (values ??= []).push(raw[i + 1] as string);
      }
      return values;
    };
    // The first Proxy-Authorization counts, as in node:http's req.headers (later ones are dropped).
    const identity = identify(headerValues('proxy-authorization')?.[0], remoteAddress, config.auth.users);
    if (!identity.ok) {
      events.error({ conn_id: connId, code: 'proxy_auth_required', host: target.host.host, port: target.port, method }, identity.reason);
      this.options.observer?.failure?.('proxy_auth_required');
      return {
        ok: false,
        answer: failure('proxy_auth_required', identity.reason, this.labelFor(target), { 'proxy-authenticate': 'Basic realm="mcp-egress-proxy"' }),
      };
    }
    const client = identity.client;
    const limitKey = identity.limitKey;
    let attribution = attribute(headerValues, client, { tool: config.attribution.toolHeader, call: config.attribution.callHeader, session: config.attribution.sessionHeader }, config.attribution.trust, this.options.registry);
    // Only a shared store answers with a promise: then the decision waits (at most state.timeout_ms).
    if (attribution instanceof Promise) {
      try {
        attribution = await attribution;
      } catch (err) {
        return this.stateUnavailable(connId, client, limitKey, target, method, err);
      }
    }
    if (attribution.kind === 'bad_request') return { ok: false, answer: this.badRequest(connId, attribution.reason, target, method) };

    const generation = this.options.store.current;
    if (attribution.kind === 'unattributed') {
      const decision: Decision = { verdict: 'deny', dispatched: false, shadow: false, reason: 'unattributed', rule: null, after: null, addresses: [], trace: [], uncovered: false };
      const call: Attribution = { tool: null, callId: attribution.callId, sessionId: null };
      const admitted: Admitted = { connId, client, limitKey, call, generation: generation.generation, digest: generation.sha256.slice(0, 12), decision, candidates: [], target, method };
      this.logDecision(admitted, null, attribution.reason);
      return { ok: false, answer: refusal(decision, this.labelFor(target, call), config.denyStatus, attribution.reason) };
    }

    // History: none passed yet (the session-history store feeds it); a sequence rule then never matches.
    const now = Date.now();
    const contexts = attribution.calls.map((c) => ({ tool: c.tool, server: client, port: target.port, callId: c.callId, now, history: NO_HISTORY }));
    const outcome = await decideCall(generation.policy, contexts, target, { resolver: this.options.resolver, classify: this.classify });
    const call = attribution.calls[outcome.kind === 'decided' ? outcome.index : 0] as Attribution;
    if (outcome.dnsMs !== null) this.options.observer?.dns?.(outcome.dnsMs);
    if (outcome.kind === 'dns_error') {
      events.error({ conn_id: connId, code: 'dns_error', dns: outcome.error.kind, host: target.host.host, port: target.port, method, server: client, tool: call.tool, call_id: call.callId }, outcome.error.message);
      this.options.observer?.failure?.('dns_error');
      return { ok: false, answer: failure('dns_error', `could not resolve ${target.host.host} (${outcome.error.kind})`, this.labelFor(target, call)) };
    }
    const admitted: Admitted = { connId, client, limitKey, call, generation: generation.generation, digest: generation.sha256.slice(0, 12), decision: outcome.decision, candidates: outcome.candidates, target, method };
    if (outcome.decision.uncovered) this.recordDiscovered(admitted);
    if (!outcome.decision.dispatched) {
      this.logDecision(admitted, null);
      return { ok: false, answer: refusal(outcome.decision, this.labelFor(target, call), config.denyStatus) };
    }
    return { ok: true, admitted };
  }

  /**
   * A decision that needed shared state the store could not give (down, or slower than
   * `state.timeout_ms`): refused, fail closed, with 503 `state_unavailable`.
   */
  private stateUnavailable(connId: string, client: string, limitKey: string, target: Target, method: string, err: unknown): Admission {
    const generation = this.options.store.current;
    const why = `the shared state store cannot answer (${(err as Error)?.message ?? String(err)})`;
    const decision: Decision = { verdict: 'deny', dispatched: false, shadow: false, reason: 'state_unavailable', rule: null, after: null, addresses: [], trace: [], uncovered: false };
    const call: Attribution = { tool: null, callId: null, sessionId: null };
    const admitted: Admitted = { connId, client, limitKey, call, generation: generation.generation, digest: generation.sha256.slice(0, 12), decision, candidates: [], target, method };
    this.logDecision(admitted, null, why);
    this.options.observer?.failure?.('state_unavailable');
    return { ok: false, answer: failure('state_unavailable', `${why}; the call is refused rather than decided without it`, this.labelFor(target)) };
  }

  private recordDiscovered(a: Admitted): void {
    const { events } = this.options;
    const connId = a.connId;
    this.options.discovered.record(a.client, a.call.tool, a.target.host.host, a.target.port, (entry) =>
      events.discovered({ server: entry.server, tool: entry.tool, host: entry.host, port: entry.port, first_seen: entry.first_seen, conn_id: connId }),
    );
  }

  /**
   * Writes the decision line now, or with `deferred` adds it to the pending batch and returns
   * the ticket to pass to `ensureWritten` before the client hears of the call.
   */
  private logDecision(a: Admitted, pinned: string | null, detail?: string, deferred = false): number {
    const event = {
      conn_id: a.connId,
      policy_generation: a.generation,
      policy_digest: a.digest,
      decision: a.decision,
      tool: a.call.tool,
      call_id: a.call.callId,
      session_id: a.call.sessionId,
      server: a.client,
      host: a.target.host.host,
      port: a.target.port,
      method: a.method,
      pinned_address: pinned,
      ...(detail ? { detail } : {}),
    };
    this.options.observer?.decision?.(a.decision, a.method);
    if (deferred) return this.options.events.deferredDecision(event);
    this.options.events.decision(event);
    return 0;
  }

  private badRequest(connId: string, message: string, target: Target | null, method: string): Answer {
    this.options.events.error({ conn_id: connId, code: 'bad_request', method, host: target?.host.host ?? null, port: target?.port ?? null }, message);
    this.options.observer?.failure?.('bad_request');
    return failure('bad_request', message, this.labelFor(target));
  }

  private dialFailure(a: Admitted, err: unknown): Answer {
    const timeout = err instanceof DialError && err.kind === 'timeout';
    const code = timeout ? 'upstream_timeout' : 'upstream_unreachable';
    const message = timeout ? `connecting to ${a.target.host.host}:${a.target.port} timed out` : `could not connect to ${a.target.host.host}:${a.target.port}`;
    this.options.events.error({ conn_id: a.connId, code, host: a.target.host.host, port: a.target.port, attempts: err instanceof DialError ? err.attempts : String(err) }, message);
    this.options.observer?.failure?.(code);
    return failure(code, message, this.labelFor(a.target, a.call));
  }

  // ---- baseline "self": never dial our own listeners ----

  /** Our own listening sockets, canonical; read once after listen (server.address() is a syscall). */
  private selfListeners(): ReadonlyArray<Listener> {
    if (this.listenersCache) return this.listenersCache;
    const listeners = canonicalListeners([...(this.address ? [this.address] : []), ...(this.options.otherListeners?.() ?? [])]);
    if (this.address) this.listenersCache = listeners;
    return listeners;
  }

  /** Forgets the cached listeners (when another listener, e.g. the admin API, starts). */
  refreshSelf(): void {
    this.listenersCache = null;
  }

  // ---- connections and parser errors ----

  /** Shared by every connection (one function, `this` is the socket). */
  private readonly connectionClosed: (this: Socket) => void;
  private readonly startLimits: ConnectionStartLimits;
  private readonly startHandlers: ConnectionStartHandlers;

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
  private refuseHead(socket: Duplex, code: Exclude<ErrorCode, 'firewall_blocked'>, message: string, headers?: Record<string, string>): void {
    // Nobody else listens on this socket any more: a reset while the answer goes out must
    // close it, not reach the process as an unhandled 'error'.
    socket.on('error', destroyOnError);
    clearHeadDeadline(socket);
    this.options.observer?.failure?.(code);
    sendRawAnswer(socket, failure(code, message, this.labelFor(null), headers));
    // After a timeout node:http's parser may still read this socket (it is freed only on a parse
    // error): a request finished in the grace period would still be served. The client has
    // sent nothing unread, so closing as soon as the 408 is out loses nothing.
    if (code === 'request_timeout') destroyWhenFlushed(socket);
  }

  private onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    // An answer of ours already under way on this connection: another one would corrupt it.
    if ((socket as { _httpMessage?: ServerResponse | null })._httpMessage?.headersSent) socket.destroy();
    else if (err.code === 'HPE_HEADER_OVERFLOW') this.refuseHead(socket, 'request_header_too_large', `request headers exceed ${this.options.config.limits.maxHeaderBytes} bytes`);
    else if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') this.refuseHead(socket, 'request_timeout', 'request headers were not received in time');
    else if (err.code !== 'ECONNRESET' && err.code !== 'EPIPE') this.refuseHead(socket, 'bad_request', `malformed request (${err.code ?? err.message})`);
    else socket.destroy();
  }

  // ---- CONNECT ----

  /** A CONNECT, read by connection-start.ts or (later on a kept-alive connection) by node:http. */
  private async onConnect(requestTarget: string, rawHeaders: readonly string[], client: Socket, head: Buffer): Promise<void> {
    client.on('error', destroyOnError);
    const target = parseAuthority(requestTarget, null);
    if ('error' in target) {
      sendRawAnswer(client, this.badRequest(this.nextConnId(), `bad CONNECT target: ${target.error}`, null, 'CONNECT'));
      return;
    }
    let admission: Admission;
    try {
      admission = await this.admit(rawHeaders, client.remoteAddress, target, 'CONNECT');
    } catch (err) {
      this.internalError(client, err);
      return;
    }
    if (!admission.ok) {
      sendRawAnswer(client, admission.answer);
      return;
    }
    const a = admission.admitted;
    const perClient = this.tunnelsByClient.get(a.limitKey) ?? 0;
    if (perClient >= this.options.config.limits.maxTunnelsPerClient) {
      this.options.events.error({ conn_id: a.connId, code: 'too_many_tunnels', server: a.client, limit_key: a.limitKey, open: perClient }, 'tunnel limit reached');
      this.options.observer?.failure?.('too_many_tunnels');
      const who = this.options.config.auth.users.length > 0 ? `client ${a.limitKey}` : `source address ${a.limitKey}`;
      sendRawAnswer(client, failure('too_many_tunnels', `${who} has ${perClient} open tunnels (limit ${this.options.config.limits.maxTunnelsPerClient})`, this.labelFor(a.target, a.call), { 'retry-after': '1' }));
      return;
    }
    this.adjustTunnels(a.limitKey, +1);
    const started = performance.now();
    let conn: PinnedConnection;
    try {
      // A client gone during the dial (a reset, or shutdown) abandons it; read when the dial
      // checks, so no 'close' listener is added and removed on every CONNECT.
      conn = await pinnedDial(a.candidates, a.target.port, this.options.config.limits.connectTimeoutMs, {
        get aborted() {
          return client.destroyed;
        },
      });
    } catch (err) {
      this.adjustTunnels(a.limitKey, -1);
      this.logDecision(a, null);
      sendRawAnswer(client, this.dialFailure(a, err));
      this.closedEvent(a.connId, 0, 0, started, client.destroyed ? 'client_closed' : 'error', true);
      return;
    }
    this.logDecision(a, conn.address.text);
    const tunnel = new Tunnel(a.connId, a.limitKey, client, conn.socket, started, this);
    this.active.add(tunnel);
    tunnel.open(head, this.options.config.limits.tunnelIdleTimeoutMs);
  }

  /** TunnelOwner: both sockets of a tunnel are closed. */
  tunnelEnded(tunnel: Tunnel): void {
    this.active.delete(tunnel);
    this.adjustTunnels(tunnel.limitKey, -1);
    this.closedEvent(tunnel.connId, tunnel.upstream.bytesWritten, tunnel.upstream.bytesRead, tunnel.started, tunnel.end ?? 'client_closed', true);
  }

  private adjustTunnels(limitKey: string, delta: number): void {
    const n = (this.tunnelsByClient.get(limitKey) ?? 0) + delta;
    if (n <= 0) this.tunnelsByClient.delete(limitKey);
    else this.tunnelsByClient.set(limitKey, n);
    this.openTunnels += delta;
    this.options.observer?.tunnels?.(this.openTunnels);
  }

  private closedEvent(connId: string, up: number, down: number, started: number, end: EndReason, tunnel: boolean): void {
    const durationMs = Math.round((performance.now() - started) * 1000) / 1000;
    this.options.events.closed({ conn_id: connId, bytes_up: up, bytes_down: down, duration_ms: durationMs, end });
    this.options.observer?.closed?.(up, down, end, tunnel);
  }

  private internalError(socket: Duplex, err: unknown): void {
    this.options.events.warn({ event: 'proxy.internal_error', err: String((err as Error)?.stack ?? err) }, 'internal error');
    sendRawAnswer(socket, failure('bad_request', 'the proxy could not handle this request', this.labelFor(null)));
  }

  // ---- plain HTTP (absolute form) ----

  private async onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    clearHeadDeadline(req.socket);
    const method = req.method ?? 'GET';
    const url = parseAbsoluteUrl(req.url ?? '');
    if ('error' in url) {
      sendAnswer(res, this.badRequest(this.nextConnId(), url.error, null, method), true);
      req.resume();
      return;
    }
    const hostHeader = req.headers.host;
    if (hostHeader !== undefined) {
      const fromHost = parseAuthority(hostHeader, 80);
      if ('error' in fromHost || !sameAuthority(fromHost, url.target)) {
        sendAnswer(res, this.badRequest(this.nextConnId(), `Host header '${hostHeader}' names another authority than the request URL`, url.target, method), true);
        req.resume();
        return;
      }
    }
    let admission: Admission;
    try {
      admission = await this.admit(req.rawHeaders, req.socket.remoteAddress, url.target, method);
    } catch (err) {
      this.options.events.warn({ event: 'proxy.internal_error', err: String((err as Error)?.stack ?? err) }, 'internal error');
      sendAnswer(res, failure('bad_request', 'the proxy could not handle this request', this.labelFor(url.target)), true);
      return;
    }
    if (!admission.ok) {
      sendAnswer(res, admission.answer, admission.answer.status === 407 ? false : true);
      req.resume();
      return;
    }
    this.forward(admission.admitted, req, res, hostHeader ?? url.authority, url.path);
  }

  /**
   * Forwards one plain-HTTP request over a pinned keep-alive connection (pinned-pool.ts) and
   * streams the answer back. A bodiless request whose reused connection the upstream had
   * already closed is sent once more on a fresh one.
   */
  private forward(a: Admitted, req: IncomingMessage, res: ServerResponse, host: string, path: string): void {
    const started = performance.now();
    const { limits } = this.options.config;
    const headers = ['host', host, ...forwardRequestHeaders(req.rawHeaders, this.dropHeaders)];
    const bodiless = (req.headers['content-length'] === undefined || req.headers['content-length'] === '0') && req.headers['transfer-encoding'] === undefined;
    const dialCancel = { aborted: false };
    let end: EndReason | null = null;
    let decisionLogged = false;
    /** The decision line's place in the pending batch: written before the client hears back. */
    let decisionTicket = 0;
    let bytesUp = 0;
    let bytesDown = 0;
    /** The connection carrying the request now, and its socket counters when it began. */
    let current: { conn: UpstreamConnection; written0: number; read0: number } | null = null;
    const finish = (reason: EndReason) => {
      if (end === null) end = reason;
    };
    const settle = (reuse: boolean) => {
      if (!current) return;
      const { conn, written0, read0 } = current;
      current = null;
      bytesUp = conn.socket.bytesWritten - written0;
      bytesDown = conn.socket.bytesRead - read0;
      if (reuse) this.pool.release(conn);
      else this.pool.discard(conn);
    };
    const call: ActiveCall = {
      abort: (reason) => {
        finish(reason);
        dialCancel.aborted = true;
        settle(false);
        res.destroy();
      },
    };
    this.active.add(call);
    const logOnce = (pinned: string | null) => {
      if (decisionLogged) return;
      decisionLogged = true;
      // Deferred when dispatched: written with others before anything of the answer goes back.
      decisionTicket = this.logDecision(a, pinned, undefined, pinned !== null);
    };
    const answer = (reason: EndReason, failed: Answer) => {
      this.options.events.ensureWritten(decisionTicket);
      finish(reason);
      if (!res.destroyed && !res.headersSent) sendAnswer(res, failed, true);
      else res.destroy();
    };

    /** `retry`: the second attempt, on a fresh connection, after a stale reused one failed. */
    const send = (retry: boolean) => {
      const idle = retry ? null : this.pool.takeIdle(a.candidates, a.target.port);
      if (idle) return dispatch(retry)(idle);
      this.pool.dial(a.candidates, a.target.port, limits.connectTimeoutMs, dialCancel).then(dispatch(retry), (err: unknown) => {
        logOnce(null);
        answer(res.destroyed ? 'client_closed' : 'error', this.dialFailure(a, err));
      });
    };
    const dispatch = (retry: boolean) => (conn: UpstreamConnection) => {
      logOnce(conn.address.text);
      if (res.destroyed) {
        // The client left while we dialled: the connection is unused and can serve another call.
        this.pool.release(conn);
        return;
      }
      current = { conn, written0: conn.socket.bytesWritten, read0: conn.socket.bytesRead };
      const reused = conn.uses > 0;
      conn.client.dispatch(
        { path, method: a.method, headers, body: bodiless ? null : req, headersTimeout: limits.tunnelIdleTimeoutMs, bodyTimeout: limits.tunnelIdleTimeoutMs },
        {
          onConnect: () => {},
          onHeaders: (status, raw, resume, statusText) => {
            // Informational answers (103) are not forwarded; the final one follows.
            if (status < 200) return true;
            this.options.events.ensureWritten(decisionTicket);
            res.writeHead(status, statusText, forwardResponseHeaders(latin1(raw)));
            res.on('drain', resume);
            return true;
          },
          onData: (chunk) => res.write(chunk),
          onComplete: () => {
            finish('upstream_closed');
            settle(true);
            res.end();
          },
          onError: (err: Error & { code?: string }) => {
            if (current?.conn !== conn) return; // already settled: the client went away
            settle(false);
            if (res.headersSent || res.destroyed) {
              finish(err.code === 'UND_ERR_BODY_TIMEOUT' ? 'idle_timeout' : 'error');
              res.destroy();
            } else if (err.code === 'UND_ERR_HEADERS_TIMEOUT') {
              this.options.observer?.failure?.('upstream_timeout');
              answer('idle_timeout', failure('upstream_timeout', `${a.target.host.host}:${a.target.port} did not answer in time`, this.labelFor(a.target, a.call)));
            } else if (err.code === 'UND_ERR_INVALID_ARG') {
              answer('error', this.badRequest(a.connId, `the request cannot be forwarded: ${err.message}`, a.target, a.method));
            } else if (!retry && reused && bodiless) {
              // The connection failed before any answer: most likely closed while idle.
              send(true);
            } else {
              this.options.observer?.failure?.('upstream_unreachable');
              answer('error', failure('upstream_unreachable', `${a.target.host.host}:${a.target.port} closed the connection before answering`, this.labelFor(a.target, a.call)));
            }
          },
        },
      );
    };

    req.on('error', () => call.abort('client_closed'));
    res.once('close', () => {
      if (!res.writableFinished) {
        finish('client_closed');
        dialCancel.aborted = true;
        settle(false);
      }
      this.active.delete(call);
      this.closedEvent(a.connId, bytesUp, bytesDown, started, end ?? 'upstream_closed', false);
    });
    send(false);
  }
}

function destroyOnError(this: Socket): void {
  this.destroy();
}

/** undici hands header lines over as bytes; the client gets them back byte for byte. */
function latin1(raw: readonly Buffer[]): string[] {
  const out = new Array<string>(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = (raw[i] as Buffer).toString('latin1');
  return out;
}
