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
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { ProxyConfig } from '../config/proxy-config.js';
import { digestsEqual, sha256Hex } from '../config/secret-hash.js';
import { formatDiagnostic } from '../config/yaml.js';
import { canonicalHost, isLoopbackHost } from '../net/address.js';
import type { IpAddress } from '../net/address.js';
import { canonicalListeners } from '../net/self.js';
import type { Listener } from '../net/self.js';
import type { NameResolver } from '../net/resolve.js';
import { compilePolicy } from '../policy/compile.js';
import { parsePolicy } from '../policy/schema.js';
import type { Entry, HistoryCall, RuleSpec } from '../policy/types.js';
import { dryRun } from '../decide/dry-run.js';
import { historyKey } from '../state/types.js';
import { earlierFromJson, historyOf, LABEL, MAX_EARLIER } from '../decide/dry-run-history.js';
import type { EarlierCall } from '../decide/dry-run-history.js';
import { ConsoleAssets, isConsolePath } from './console-assets.js';
import { draftPolicy } from './draft.js';
import { createHostCheck } from './host-check.js';
import { EVENTS_QUERY_KEYS, serveEvents } from './events-route.js';
import { handlePolicyRoute } from './policy-routes.js';
import type { RouteContext } from './policy-routes.js';
import { replayDraft } from './replay-route.js';
import { createBaseline } from '../net/baseline.js';
import { readJsonObject } from './http-body.js';
import { badRequest, HttpError } from './http-error.js';
import type { Metrics } from './metrics.js';
import type { AdminRuntime } from './runtime.js';
import { StateUnavailableError } from '../state/types.js';

type Role = 'viewer' | 'developer';
const RANK: Record<Role, number> = { viewer: 1, developer: 2 };
/** A refused registration's status: a clash, this client's cap, or the whole registry's. */
const REFUSED_REGISTRATION_STATUS = { conflict: 409, client_limit: 429, registry_full: 503 } as const;
const CALL_ID = /^[\x21-\x7e]{1,256}$/;
const MAX_DESTINATION = 2048;
const MAX_RESOLVE_HOSTS = 64;
const MAX_RESOLVE_ADDRESSES = 64;
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

/** An optional label field: absent/null, or a string of 1 to 256 characters without control characters. */
function optionalLabel(b: Record<string, unknown>, key: string): string | null {
  const v = b[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== 'string' || !LABEL.test(v))
    throw badRequest(`${key} must be a string of 1 to 256 characters without control characters`);
  return v;
}

function onlyKeys(b: Record<string, unknown>, allowed: readonly string[]): void {
  for (const key of Object.keys(b))
    if (!allowed.includes(key)) throw badRequest(`unknown field '${key.slice(0, 64)}' (accepted: ${allowed.join(', ')})`);
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

/** A client as the data path names it: an IP address canonical, a user name as written. */
function canonicalClient(client: string): string {
  const c = canonicalHost(client);
  return c.kind === 'ip' ? c.host : client;
}

/** One recorded call as `GET /v1/history` shows it (interface.md "Session history"). */
function historyJson(c: HistoryCall): Record<string, unknown> {
  return {
    at: new Date(c.at).toISOString(),
    tool: c.tool,
    call_id: c.callId,
    server: c.server,
    session_id: c.sessionId,
    host: c.host,
    address: c.address?.text ?? null,
    dispatched: c.dispatched,
  };
}

function entryText(e: Entry): string {
  return e.kind === 'cidr' ? e.cidr.text : e.kind === 'host' ? e.host : `*.${e.suffix}`;
}

function ruleJson(r: RuleSpec): Record<string, unknown> {
  return {
    id: r.id,
    label: r.label,
    priority: r.priority,
    stage: r.stage,
    tool_name_glob: r.toolGlob,
    server_glob: r.serverGlob,
    verdict: r.verdict,
    egress: r.lists ? { allow: r.lists.allow.map(entryText), deny: r.lists.deny.map(entryText) } : null,
    ports: r.ports,
    after: r.after
      ? {
          tool_name_glob: r.after.toolGlob,
          server_glob: r.after.serverGlob,
          hosts: r.after.hosts ? r.after.hosts.map(entryText) : null,
          within_seconds: r.after.withinSeconds,
        }
      : null,
  };
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
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host, port }, () => resolve());
    });
    const addr = this.server.address() as { address: string; port: number };
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
      checkQuery(url.path, url.query);
      const route = `${req.method} ${url.path}`;
      const { running } = this.deps;
      switch (route) {
        case 'GET /healthz':
          return this.send(res, 200, { status: 'ok' });
        case 'GET /readyz': {
          // Readiness does not depend on the state store: one shared Redis down must not take
          // every replica out of a Service at once (their calls that need no state still work).
          const ready = running.proxy.address !== null && running.store.loaded;
          return this.send(res, ready ? 200 : 503, {
            ready,
            policy_generation: running.store.loaded ? running.store.current.generation : null,
            state: running.state.up ? 'up' : 'down',
            state_store: running.state.store,
          });
        }
        case 'GET /metrics': {
          // The open registrations are counted by the store (fleet-wide with Redis); a store that cannot say leaves the gauge as it was.
          try {
            this.deps.metrics.registered.set(await running.registry.size());
          } catch {
            // state_unavailable: mcp_egress_state_up says so
          }
          return this.send(res, 200, await this.deps.metrics.registry.metrics(), this.deps.metrics.registry.contentType);
        }
        case 'GET /v1/policy': {
          this.require(req, 'viewer');
          const g = running.store.current;
          const spec = g.policy.spec;
          res.setHeader('etag', `"${g.sha256}"`);
          return this.send(res, 200, {
            generation: g.generation,
            loaded_at: g.loadedAt,
            sha256: g.sha256,
            source: g.source,
            default_verdict: spec.defaultVerdict,
            shadow_mode: spec.shadowMode,
            observe_mode: spec.observeMode,
            egress_rules: g.egressRules,
            skipped_rules: g.skippedRules,
            warnings: g.warnings,
            rules: spec.rules.map(ruleJson),
            last_error: running.store.lastError,
          });
        }
        case 'POST /v1/reload': {
          this.require(req, 'developer');
          const ok = await running.reload('api');
          const g = running.store.current;
          if (!ok) return this.send(res, 422, { ok: false, generation: g.generation, error: running.store.lastError });
          return this.send(res, 200, { ok: true, generation: g.generation, sha256: g.sha256, loaded_at: g.loadedAt });
        }
        case 'POST /v1/test':
          this.require(req, 'developer');
          return this.send(res, 200, await this.test(await this.body(req)));
        case 'POST /v1/calls': {
          this.require(req, 'developer');
          const b = await this.body(req);
          onlyKeys(b, ['call_id', 'tool', 'client', 'session_id', 'ttl_ms']);
          const callId = b.call_id;
          if (typeof callId !== 'string' || !CALL_ID.test(callId)) throw badRequest('call_id must be 1 to 256 visible ASCII characters');
          const tool = optionalLabel(b, 'tool');
          const client = optionalLabel(b, 'client');
          if (tool === null) throw badRequest('tool is required (a string of 1 to 256 characters)');
          if (client === null) throw badRequest('client is required (a proxy user name or a source IP)');
          const sessionId = optionalLabel(b, 'session_id');
          if (
            b.ttl_ms !== undefined &&
            (typeof b.ttl_ms !== 'number' || !Number.isInteger(b.ttl_ms) || b.ttl_ms < 1 || b.ttl_ms > 86_400_000)
          ) {
            throw badRequest('ttl_ms must be an integer from 1 to 86400000');
          }
          // With auth.users every client is identified by its user name: a registration for
          // anything else could never match a connection, so it is refused as a mistake.
          const users = this.deps.config.auth.users;
          if (users.length > 0 && !users.some((u) => u.name === client))
            throw badRequest(
              `client '${client}' is not a proxy user (auth.users); with users configured, clients are identified by user name`,
            );
          const registered = await running.registry.register({ callId, tool, client: canonicalClient(client), sessionId, ttlMs: b.ttl_ms });
          if ('error' in registered) throw new HttpError(REFUSED_REGISTRATION_STATUS[registered.code], registered.code, registered.error);
          // A registered call is history for its session, also when it never reaches the network
          // (a read_file on one server counts for a fetch on another); its connections merge into it.
          running.history.record({
            at: registered.registeredAt,
            tool: registered.tool,
            callId: registered.callId,
            server: registered.client,
            sessionId: registered.sessionId,
            host: null,
            address: null,
            dispatched: null,
          });
          return this.send(res, 201, {
            call_id: registered.callId,
            tool: registered.tool,
            client: registered.client,
            session_id: registered.sessionId,
            expires_at: new Date(registered.expiresAt).toISOString(),
          });
        }
        case 'GET /v1/calls': {
          // One client's open registrations (the console's Calls view): by client, as the data path looks them up.
          this.require(req, 'viewer');
          const client = url.query.get('client');
          if (client === null || !LABEL.test(client)) throw badRequest('client is required (?client=USER or a source IP)');
          const canonical = canonicalHost(client);
          const calls = await running.registry.open(canonical.kind === 'ip' ? canonical.host : client);
          return this.send(res, 200, {
            client,
            calls: calls.map((c) => ({
              call_id: c.callId,
              tool: c.tool,
              client: c.client,
              session_id: c.sessionId,
              registered_at: new Date(c.registeredAt).toISOString(),
              expires_at: new Date(c.expiresAt).toISOString(),
            })),
          });
        }
        case 'GET /v1/events':
          return serveEvents(this.context(req, res, url.path), res, url.query, running.feed);
        case 'POST /v1/test/replay':
          this.require(req, 'developer');
          return this.send(res, 200, await replayDraft(await this.body(req), running.store.current, running.feed, this.replayBaseline));
        case 'GET /v1/history': {
          this.require(req, 'viewer');
          const session = url.query.get('session');
          const server = url.query.get('server');
          if ((session === null) === (server === null)) throw badRequest('give exactly one of ?session=ID or ?server=ID');
          const value = (session ?? server) as string;
          if (!LABEL.test(value))
            throw badRequest(`${session !== null ? 'session' : 'server'} must be 1 to 256 characters without control characters`);
          const key = session !== null ? historyKey(session, null) : historyKey(null, canonicalClient(value));
          const calls = await this.readHistory(key);
          return this.send(res, 200, { key, calls: calls.map(historyJson) });
        }
        case 'GET /v1/discovered': {
          this.require(req, 'viewer');
          const destinations = await running.discovered.list();
          const format = url.query.get('format') ?? 'json';
          if (format !== 'json' && format !== 'yaml') throw badRequest("format must be 'json' or 'yaml'");
          if (format === 'yaml') return this.send(res, 200, draftPolicy(destinations), 'application/yaml');
          return this.send(res, 200, { destinations });
        }
      }
      if (await handlePolicyRoute(this.context(req, res, url.path), running.policyWriter)) return;
      if (req.method === 'DELETE' && url.path.startsWith('/v1/calls/')) {
        this.require(req, 'developer');
        let callId: string;
        try {
          callId = decodeURIComponent(url.path.slice('/v1/calls/'.length));
        } catch {
          throw badRequest('the call id in the path is not valid percent-encoded UTF-8');
        }
        if (!CALL_ID.test(callId)) throw badRequest('a call id is 1 to 256 visible ASCII characters');
        if (!(await running.registry.end(callId))) throw new HttpError(404, 'not_found', 'no such registered call');
        res.writeHead(204).end();
        return;
      }
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

  /**
   * A key's live history, newest first; 503 `state_unavailable` when the store cannot vouch for
   * it (a bound dropped calls still inside the window, or a shared store is down or slow).
   */
  private async readHistory(key: string): Promise<readonly HistoryCall[]> {
    let calls: readonly HistoryCall[] | null;
    try {
      calls = await this.deps.running.history.read(key, Date.now());
    } catch {
      calls = null;
    }
    if (calls === null)
      throw new HttpError(
        503,
        'state_unavailable',
        `the history of ${key.slice(0, 300)} cannot be read completely now (a history bound dropped calls still inside the window, or the state store is unavailable)`,
      );
    return calls;
  }

  /** What a route module gets: the request, the role check with the caller's name, and the answer. */
  private context(req: IncomingMessage, res: ServerResponse, path: string): RouteContext {
    return {
      req,
      method: req.method ?? '',
      path,
      requireRole: (role) => this.require(req, role),
      send: (status, body, headers) => this.send(res, status, body, 'application/json', headers),
    };
  }

  /** Replay judges the recorded addresses by the live baseline (exemptions and the proxy's own listeners). */
  private get replayBaseline() {
    return createBaseline({ allowCidrs: this.deps.config.baseline.allowCidrs, isSelf: this.deps.isSelf });
  }

  private async test(b: Record<string, unknown>): Promise<unknown> {
    const { running, config } = this.deps;
    onlyKeys(b, ['policy', 'tool', 'server', 'call_id', 'session_id', 'destination', 'resolve', 'history']);
    if (typeof b.destination !== 'string' || b.destination.length === 0 || b.destination.length > MAX_DESTINATION) {
      throw badRequest(`destination is required (a URL or host:port, at most ${MAX_DESTINATION} characters)`);
    }
    const tool = optionalLabel(b, 'tool');
    const server = optionalLabel(b, 'server');
    if (b.policy !== undefined && b.policy !== null && typeof b.policy !== 'string')
      throw badRequest('policy must be a string (the YAML text)');
    const callId = b.call_id === undefined || b.call_id === null ? null : b.call_id;
    if (callId !== null && (typeof callId !== 'string' || !CALL_ID.test(callId)))
      throw badRequest('call_id must be 1 to 256 visible ASCII characters');
    const sessionId = optionalLabel(b, 'session_id');
    let earlier: EarlierCall[] | null = null;
    if (b.history !== undefined && b.history !== null) {
      if (!Array.isArray(b.history) || b.history.length > MAX_EARLIER)
        throw badRequest(
          `history must be a list of at most ${MAX_EARLIER} earlier calls {tool, seconds_ago, server?, host?, address?, call_id?, dispatched?}`,
        );
      earlier = b.history.map((item, index) => {
        const call = earlierFromJson(item, index);
        if ('error' in call) throw badRequest(call.error);
        return call;
      });
    }
    let resolve: Array<[string, string[]]> = [];
    if (b.resolve !== undefined) {
      if (typeof b.resolve !== 'object' || b.resolve === null || Array.isArray(b.resolve))
        throw badRequest('resolve must be an object {host: [ip, ...]}');
      const entries = Object.entries(b.resolve as Record<string, unknown>);
      if (entries.length > MAX_RESOLVE_HOSTS) throw badRequest(`resolve may name at most ${MAX_RESOLVE_HOSTS} hosts`);
      resolve = entries.map(([host, ips]) => {
        const shown = host.slice(0, 64);
        if (!Array.isArray(ips) || !ips.every((i) => typeof i === 'string'))
          throw badRequest(`resolve.${shown} must be a list of IP strings`);
        if (ips.length > MAX_RESOLVE_ADDRESSES) throw badRequest(`resolve.${shown} may list at most ${MAX_RESOLVE_ADDRESSES} addresses`);
        return [host, ips];
      });
    }
    let policy = running.store.current.policy;
    if (typeof b.policy === 'string') {
      const draft = parsePolicy('draft.yaml', b.policy);
      if (!draft.spec)
        throw new HttpError(400, 'invalid_policy', 'the draft policy is not valid', {
          errors: draft.diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic),
        });
      policy = compilePolicy(draft.spec);
    }
    // An explicit history is exactly what the decision sees; without one, a session's live history.
    const now = Date.now();
    const history =
      earlier !== null
        ? historyOf(earlier, { now, sessionId, server })
        : sessionId !== null
          ? await this.readHistory(historyKey(sessionId, null))
          : [];
    const input = { destination: b.destination, tool, server, resolve, callId, now, history };
    const result = await dryRun(policy, input, {
      fallback: this.deps.resolver,
      allowCidrs: config.baseline.allowCidrs,
      isSelf: this.deps.isSelf,
    });
    if (result.kind === 'invalid') throw badRequest(result.error);
    if (result.kind === 'dns_error') return { error: result.error };
    return result.decision;
  }
}
