/**
 * The admin API (interface.md "Admin API") on its own listener: health, readiness, metrics, the
 * serving policy, reload, dry runs, registered calls and discovered destinations.
 *
 * Threat: the guarded MCP server can reach loopback, so it can reach this listener; a web page
 * on the same host can too (DNS rebinding, cross-site posts). Neither may register or end
 * calls (that decides attribution), reload, or run dry runs (a draft policy makes the proxy
 * resolve any name: a DNS channel past "no DNS for names refused by name").
 *
 * Access, checked in this order: `Host` and `Origin` must name this listener (host-check.ts:
 * 421, 403); the request target must be a path, its query known (400); then `Authorization: Bearer
 * <token>`, tokens configured as SHA-256 hashes with a role (viewer < developer), compared in
 * constant time against every configured hash. Missing or wrong token: 401; too low a role:
 * 403. With no tokens configured the API serves only on a loopback address, where a caller
 * without a token is a viewer (a write or dry run gets 401: it needs a developer token), and
 * refuses to start anywhere else (config validation says so first). Bodies are JSON objects,
 * at most 256 KiB, validated field by field; anything malformed is a 400, never a 500.
 *
 * This module is the listener and that pipeline (checks, roles, target, routing table, error
 * answers); the routes themselves are in modules by topic: status-routes.ts, calls-routes.ts,
 * test-route.ts, replay-route.ts, events-route.ts, policy-routes.ts.
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { ProxyConfig } from '../config/proxy-config.js';
import { digestsEqual, sha256Hex } from '../config/secret-hash.js';
import { isLoopbackHost } from '../net/address.js';
import { listenOn } from '../net/listen.js';
import type { IpAddress } from '../net/address.js';
import { canonicalListeners } from '../net/self.js';
import type { Listener } from '../net/self.js';
import type { NameResolver } from '../net/resolve.js';
import { endCall, listCalls, registerCall, sessionHistory } from './calls-routes.js';
import { ConsoleAssets, isConsolePath } from './console-assets.js';
import { checkFetchSite, createHostCheck } from './host-check.js';
import { EVENTS_QUERY_KEYS, serveEvents } from './events-route.js';
import { handlePolicyRoute } from './policy-routes.js';
import type { RouteContext } from './policy-routes.js';
import { replayDraft } from './replay-route.js';
import { discovered, metricsText, readiness, reloadPolicy, servingPolicy } from './status-routes.js';
import { testDestination } from './test-route.js';
import { createBaseline } from '../net/baseline.js';
import { readJsonObject } from './http-body.js';
import { badRequest, HttpError } from './http-error.js';
import type { Metrics } from './metrics.js';
import type { AdminRuntime } from './runtime.js';
import { StateUnavailableError } from '../state/types.js';

type Role = 'viewer' | 'developer';
const RANK: Record<Role, number> = { viewer: 1, developer: 2 };
/** Query keys each route accepts; others (and repeated ones) are a 400. */
const QUERY_KEYS: Record<string, readonly string[]> = {
  '/v1/discovered': ['format'],
  '/v1/history': ['session', 'server'],
  '/v1/events': EVENTS_QUERY_KEYS,
  '/v1/calls': ['client'],
};

export interface AdminDeps {
  readonly config: ProxyConfig;
  readonly running: AdminRuntime;
  readonly metrics: Metrics;
  readonly resolver: NameResolver;
  /** Whether `ip:port` is one of the proxy's own listeners, for dry runs (src/net/self.ts). */
  readonly isSelf?: (ip: IpAddress, port: number) => boolean;
  /** The host's own addresses (default: its interfaces), for the Host check on a wildcard listener. */
  readonly localAddresses?: () => ReadonlySet<string>;
  /** The built console's directory (default: the package's dist/console). */
  readonly consoleDir?: string;
}

/** The request target split, without normalising anything (the path is routed as sent). */
function parseTarget(raw: string | undefined): { path: string; query: URLSearchParams } {
  const target = raw ?? '';
  if (!target.startsWith('/')) throw badRequest('the request target must be a path (origin-form)');
  const q = target.indexOf('?');
  const path = q === -1 ? target : target.slice(0, q);
  const query = new URLSearchParams(q === -1 ? '' : target.slice(q + 1));
  return { path, query };
}

function checkQuery(path: string, query: URLSearchParams): void {
  if (!path.startsWith('/v1/')) return;
  const allowed = QUERY_KEYS[path] ?? [];
  const seen = new Set<string>();
  for (const key of query.keys()) {
    if (!allowed.includes(key)) throw badRequest(`unknown query parameter '${key.slice(0, 64)}'`);
    if (seen.has(key)) throw badRequest(`query parameter '${key.slice(0, 64)}' given more than once`);
    seen.add(key);
  }
}

export class AdminServer {
  readonly server: Server;
  private readonly tokenHashes: ReadonlyArray<{ hash: string; role: Role; name: string }>;
  private bound: Listener | null = null;
  private readonly hostCheck: ReturnType<typeof createHostCheck>;
  private readonly console: ConsoleAssets;

  constructor(private readonly deps: AdminDeps) {
    this.console = new ConsoleAssets(deps.consoleDir);
    this.tokenHashes = deps.config.admin.tokens.map((t) => ({ hash: t.sha256, role: t.role, name: t.name }));
    this.hostCheck = createHostCheck({
      listener: () => this.bound,
      allowedHosts: deps.config.admin.allowedHosts,
      localAddresses: deps.localAddresses,
    });
    this.server = createServer(
      { headersTimeout: 10_000, requestTimeout: 30_000, maxHeaderSize: 16 * 1024 },
      (req, res) => void this.handle(req, res),
    );
  }

  async listen(host: string, port: number): Promise<{ address: string; port: number }> {
    if (this.tokenHashes.length === 0 && !isLoopbackHost(host)) {
      throw new Error(`admin API: no admin.tokens configured, so it may only listen on a loopback address, not ${host}`);
    }
    const addr = await listenOn(this.server, host, port);
    this.bound = canonicalListeners([addr])[0] as Listener;
    return { address: addr.address, port: addr.port };
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.closeAllConnections();
      this.server.close(() => resolve());
    });
  }

  /** The caller's role: a viewer without a token when none are configured; 401 for a missing or wrong one. */
  private role(req: IncomingMessage): Role {
    return this.caller(req).role;
  }

  /** The caller's role and token name (null for the tokenless viewer). */
  private caller(req: IncomingMessage): { role: Role; name: string | null } {
    const header = req.headers.authorization;
    if (header === undefined && this.tokenHashes.length === 0) return { role: 'viewer', name: null };
    const m = header ? /^Bearer ([\x21-\x7e]+)$/.exec(header) : null;
    if (!m) throw new HttpError(401, 'unauthorized', 'an admin token is required (Authorization: Bearer <token>)');
    const digest = sha256Hex(m[1] as string);
    let role: Role | null = null;
    let name: string | null = null;
    // Compared against every token, so the time taken does not say which one matched.
    for (const t of this.tokenHashes) {
      if (digestsEqual(digest, t.hash) && (role === null || RANK[t.role] > RANK[role])) {
        role = t.role;
        name = t.name;
      }
    }
    if (!role) throw new HttpError(401, 'unauthorized', 'invalid admin token');
    return { role, name };
  }

  /** Checks the caller's role (401/403 otherwise); returns its token name. */
  private require(req: IncomingMessage, needed: Role): string | null {
    const caller = this.caller(req);
    if (RANK[caller.role] >= RANK[needed]) return caller.name;
    // No token at all (the tokenless viewer): the answer is "authenticate", not "forbidden".
    if (req.headers.authorization === undefined) {
      throw new HttpError(
        401,
        'unauthorized',
        `this route needs a ${needed} token (Authorization: Bearer <token>); make one with \`mcp-egress-proxy token\` and list it in admin.tokens`,
      );
    }
    throw new HttpError(403, 'forbidden', `this route needs the ${needed} role`);
  }

  private body(req: IncomingMessage): Promise<Record<string, unknown>> {
    return readJsonObject(req);
  }

  private send(
    res: ServerResponse,
    status: number,
    body: unknown,
    contentType = 'application/json',
    headers: Record<string, string> = {},
  ): void {
    const text = contentType === 'application/json' ? JSON.stringify(body) : String(body);
    res.writeHead(status, {
      ...headers,
      'content-type': contentType,
      'content-length': Buffer.byteLength(text),
      'cache-control': 'no-store',
    });
    res.end(text);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      // node:http keeps the first of several Host (and Origin) headers: a second one could name
      // anything and pass unseen. More than one of either is a malformed request (RFC 9112 §3.2).
      const hosts = req.headersDistinct.host;
      if (hosts !== undefined && hosts.length > 1) throw badRequest(`${hosts.length} Host headers; send exactly one`);
      const origins = req.headersDistinct.origin;
      if (origins !== undefined && origins.length > 1) throw badRequest(`${origins.length} Origin headers; send at most one`);
      const hostVerdict = this.hostCheck(req.headers.host, req.headers.origin);
      if (!hostVerdict.ok) throw new HttpError(hostVerdict.status, hostVerdict.code, hostVerdict.message);
      const url = parseTarget(req.url);
      // The console's files: after the Host/Origin check, before any route (console-assets.ts).
      if (isConsolePath(url.path)) return this.console.serve(req, res, url.path);
      const site = checkFetchSite(req.headers['sec-fetch-site']);
      if (!site.ok) throw new HttpError(site.status, site.code, site.message);
      checkQuery(url.path, url.query);
      const route = `${req.method} ${url.path}`;
      const { running, config, metrics } = this.deps;
      const ctx = this.context(req, res, url);
      switch (route) {
        case 'GET /healthz':
          return this.send(res, 200, { status: 'ok' });
        case 'GET /readyz':
          return readiness(ctx, running);
        case 'GET /metrics':
          return await metricsText(ctx, running, metrics);
        case 'GET /v1/policy':
          return servingPolicy(ctx, running);
        case 'POST /v1/reload':
          return await reloadPolicy(ctx, running);
        case 'POST /v1/test':
          this.require(req, 'developer');
          return this.send(res, 200, await testDestination(await this.body(req), this.deps));
        case 'POST /v1/calls':
          return await registerCall(ctx, running, config);
        case 'GET /v1/calls':
          return await listCalls(ctx, running);
        case 'GET /v1/events':
          return serveEvents(ctx, res, url.query, running.feed);
        case 'POST /v1/test/replay':
          this.require(req, 'developer');
          return this.send(res, 200, await replayDraft(await this.body(req), running.store.current, running.feed, this.replayBaseline));
        case 'GET /v1/history':
          return await sessionHistory(ctx, running);
        case 'GET /v1/discovered':
          return await discovered(ctx, running);
      }
      if (await handlePolicyRoute(ctx, running.policyWriter)) return;
      if (req.method === 'DELETE' && url.path.startsWith('/v1/calls/')) return await endCall(ctx, running);
      const known = [
        '/healthz',
        '/readyz',
        '/metrics',
        '/v1/policy',
        '/v1/reload',
        '/v1/test',
        '/v1/calls',
        '/v1/discovered',
        '/v1/history',
        '/v1/events',
        '/v1/test/replay',
        '/v1/rules',
      ];
      const shown = url.path.slice(0, 200);
      if (known.includes(url.path) || url.path.startsWith('/v1/calls/') || url.path.startsWith('/v1/rules/'))
        throw new HttpError(405, 'method_not_allowed', `${req.method} is not allowed on ${shown}`);
      throw new HttpError(404, 'not_found', `no route ${shown}`);
    } catch (err) {
      if (err instanceof HttpError) {
        // Refused access is an audit line: a rebinding page, a cross-site post, or the guarded
        // server trying a write. Never the token; header values cut short.
        if (err.status === 401 || err.status === 403 || err.status === 421) {
          const cut = (v: string | undefined) => (v === undefined ? null : v.slice(0, 200));
          this.deps.running.events.warn(
            {
              event: 'admin.refused',
              status: err.status,
              code: err.code,
              method: req.method,
              target: cut(req.url),
              host: cut(req.headers.host),
              origin: cut(req.headers.origin),
              remote: req.socket.remoteAddress ?? null,
            },
            `admin API refused ${req.method} ${cut(req.url)}: ${err.code}`,
          );
        }
        const headers: Record<string, string> = err.status === 401 ? { 'www-authenticate': 'Bearer realm="mcp-egress-proxy admin"' } : {};
        for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
        this.send(res, err.status, { error: { code: err.code, message: err.message, ...err.extra } });
        if (err.status === 413) req.destroy();
        return;
      }
      if (err instanceof StateUnavailableError) {
        this.send(res, 503, { error: { code: 'state_unavailable', message: `${err.message}; nothing was changed, try again` } });
        return;
      }
      // A bug, not bad input (that is a 400 above): its message, without a stack for the log.
      this.deps.running.events.warn(
        { event: 'admin.internal_error', method: req.method, error: String((err as Error)?.message ?? err).slice(0, 500) },
        'admin API error',
      );
      if (!res.headersSent) this.send(res, 500, { error: { code: 'internal_error', message: 'internal error' } });
    }
  }

  /** What a route module gets: the request, the role check with the caller's name, and the answer. */
  private context(req: IncomingMessage, res: ServerResponse, url: { path: string; query: URLSearchParams }): RouteContext {
    return {
      req,
      res,
      method: req.method ?? '',
      path: url.path,
      query: url.query,
      requireRole: (role) => this.require(req, role),
      send: (status, body, headers) => this.send(res, status, body, 'application/json', headers),
      sendAs: (status, text, contentType) => this.send(res, status, text, contentType),
    };
  }

  /** Replay judges the recorded addresses by the live baseline (exemptions and the proxy's own listeners). */
  private get replayBaseline() {
    return createBaseline({ allowCidrs: this.deps.config.baseline.allowCidrs, isSelf: this.deps.isSelf });
  }
}
