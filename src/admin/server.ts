/**
 * The admin API (interface.md "Admin API") on its own listener: health, readiness, metrics, the
 * serving policy, reload, dry runs, registered calls and discovered destinations.
 *
 * Access: `Authorization: Bearer <token>`, tokens configured as SHA-256 hashes with a role
 * (viewer < developer), compared in constant time against every configured hash. Missing or
 * wrong token: 401; too low a role: 403. With no tokens configured the API serves only on a
 * loopback address, where every caller is a developer, and refuses to start anywhere else.
 * Bodies are JSON, at most 256 KiB, validated field by field.
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { ProxyConfig } from '../config/proxy-config.js';
import { digestsEqual, sha256Hex } from '../config/secret-hash.js';
import { formatDiagnostic } from '../config/yaml.js';
import type { Running } from '../commands/serve.js';
import { canonicalHost } from '../net/address.js';
import type { NameResolver } from '../net/resolve.js';
import { compilePolicy } from '../policy/compile.js';
import { parsePolicy } from '../policy/schema.js';
import type { Entry, RuleSpec } from '../policy/types.js';
import { dryRun } from '../proxy/dry-run.js';
import { draftPolicy } from './draft.js';
import type { Metrics } from './metrics.js';

type Role = 'viewer' | 'developer';
const RANK: Record<Role, number> = { viewer: 1, developer: 2 };
const MAX_BODY = 256 * 1024;
const CALL_ID = /^[\x21-\x7e]{1,256}$/;

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

export interface AdminDeps {
  readonly config: ProxyConfig;
  readonly running: Running;
  readonly metrics: Metrics;
  readonly resolver: NameResolver;
}

export function isLoopback(host: string): boolean {
  const h = canonicalHost(host);
  return h.kind === 'ip' && (h.ip.family === 4 ? h.ip.v4 >>> 24 === 127 : h.ip.text === '::1');
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
  };
}

export class AdminServer {
  readonly server: Server;
  private readonly tokenHashes: ReadonlyArray<{ hash: string; role: Role; name: string }>;

  constructor(private readonly deps: AdminDeps) {
    this.tokenHashes = deps.config.admin.tokens.map((t) => ({ hash: t.sha256, role: t.role, name: t.name }));
    this.server = createServer({ headersTimeout: 10_000, requestTimeout: 30_000, maxHeaderSize: 16 * 1024 }, (req, res) => void this.handle(req, res));
  }

  async listen(host: string, port: number): Promise<{ address: string; port: number }> {
    if (this.tokenHashes.length === 0 && !isLoopback(host)) {
      throw new Error(`admin API: no admin.tokens configured, so it may only listen on a loopback address, not ${host}`);
    }
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host, port }, () => resolve());
    });
    const addr = this.server.address() as { address: string; port: number };
    return { address: addr.address, port: addr.port };
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.closeAllConnections();
      this.server.close(() => resolve());
    });
  }

  private role(req: IncomingMessage): Role {
    if (this.tokenHashes.length === 0) return 'developer';
    const header = req.headers.authorization;
    const m = header ? /^Bearer ([\x21-\x7e]+)$/.exec(header) : null;
    if (!m) throw new HttpError(401, 'unauthorized', 'an admin token is required (Authorization: Bearer <token>)');
    const digest = sha256Hex(m[1] as string);
    let role: Role | null = null;
    // Compared against every token, so the time taken does not say which one matched.
    for (const t of this.tokenHashes) if (digestsEqual(digest, t.hash) && (role === null || RANK[t.role] > RANK[role])) role = t.role;
    if (!role) throw new HttpError(401, 'unauthorized', 'invalid admin token');
    return role;
  }

  private require(req: IncomingMessage, needed: Role): void {
    const role = this.role(req);
    if (RANK[role] < RANK[needed]) throw new HttpError(403, 'forbidden', `this route needs the ${needed} role`);
  }

  private async body(req: IncomingMessage): Promise<Record<string, unknown>> {
    const type = req.headers['content-type'] ?? '';
    if (!/^application\/json\b/i.test(type)) throw new HttpError(415, 'unsupported_media_type', 'send a JSON body (content-type: application/json)');
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > MAX_BODY) throw new HttpError(413, 'payload_too_large', `bodies are limited to ${MAX_BODY} bytes`);
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (size > MAX_BODY) throw new HttpError(413, 'payload_too_large', `bodies are limited to ${MAX_BODY} bytes`);
      chunks.push(chunk as Buffer);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (err) {
      throw new HttpError(400, 'bad_request', `invalid JSON: ${(err as Error).message}`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new HttpError(400, 'bad_request', 'the body must be a JSON object');
    return parsed as Record<string, unknown>;
  }

  private send(res: ServerResponse, status: number, body: unknown, contentType = 'application/json'): void {
    const text = contentType === 'application/json' ? JSON.stringify(body) : String(body);
    res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
    res.end(text);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const url = new URL(req.url ?? '/', 'http://admin');
      const route = `${req.method} ${url.pathname}`;
      const { running } = this.deps;
      switch (route) {
        case 'GET /healthz':
          return this.send(res, 200, { status: 'ok' });
        case 'GET /readyz': {
          const ready = running.proxy.address !== null && running.store.loaded;
          return this.send(res, ready ? 200 : 503, { ready, policy_generation: running.store.loaded ? running.store.current.generation : null });
        }
        case 'GET /metrics': {
          this.deps.metrics.registered.set(running.registry.size);
          return this.send(res, 200, await this.deps.metrics.registry.metrics(), this.deps.metrics.registry.contentType);
        }
        case 'GET /v1/policy': {
          this.require(req, 'viewer');
          const g = running.store.current;
          const spec = g.policy.spec;
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
          const callId = b.call_id;
          const tool = b.tool;
          const client = b.client;
          if (typeof callId !== 'string' || !CALL_ID.test(callId)) throw new HttpError(400, 'bad_request', 'call_id must be 1 to 256 visible ASCII characters');
          if (typeof tool !== 'string' || tool.length === 0 || tool.length > 256) throw new HttpError(400, 'bad_request', 'tool must be a non-empty string');
          if (typeof client !== 'string' || client.length === 0 || client.length > 256) throw new HttpError(400, 'bad_request', 'client must be a non-empty string (a proxy user name or a source IP)');
          if (b.session_id !== undefined && b.session_id !== null && typeof b.session_id !== 'string') throw new HttpError(400, 'bad_request', 'session_id must be a string');
          if (b.ttl_ms !== undefined && (typeof b.ttl_ms !== 'number' || !Number.isInteger(b.ttl_ms) || b.ttl_ms < 1 || b.ttl_ms > 86_400_000)) {
            throw new HttpError(400, 'bad_request', 'ttl_ms must be an integer from 1 to 86400000');
          }
          const canonicalClient = canonicalHost(client);
          const registered = running.registry.register({
            callId,
            tool,
            client: canonicalClient.kind === 'ip' ? canonicalClient.host : client,
            sessionId: (b.session_id as string | undefined) ?? null,
            ttlMs: b.ttl_ms as number | undefined,
          });
          if ('error' in registered) throw new HttpError(409, 'conflict', registered.error);
          return this.send(res, 201, { call_id: registered.callId, tool: registered.tool, client: registered.client, session_id: registered.sessionId, expires_at: new Date(registered.expiresAt).toISOString() });
        }
        case 'GET /v1/discovered': {
          this.require(req, 'viewer');
          const destinations = running.discovered.list();
          if (url.searchParams.get('format') === 'yaml') return this.send(res, 200, draftPolicy(destinations), 'application/yaml');
          return this.send(res, 200, { destinations });
        }
      }
      if (req.method === 'DELETE' && url.pathname.startsWith('/v1/calls/')) {
        this.require(req, 'developer');
        const callId = decodeURIComponent(url.pathname.slice('/v1/calls/'.length));
        if (!running.registry.end(callId)) throw new HttpError(404, 'not_found', 'no such registered call');
        res.writeHead(204).end();
        return;
      }
      const known = ['/healthz', '/readyz', '/metrics', '/v1/policy', '/v1/reload', '/v1/test', '/v1/calls', '/v1/discovered'];
      if (known.includes(url.pathname) || url.pathname.startsWith('/v1/calls/')) throw new HttpError(405, 'method_not_allowed', `${req.method} is not allowed on ${url.pathname}`);
      throw new HttpError(404, 'not_found', `no route ${url.pathname}`);
    } catch (err) {
      if (err instanceof HttpError) {
        const headers: Record<string, string> = err.status === 401 ? { 'www-authenticate': 'Bearer realm="mcp-egress-proxy admin"' } : {};
        for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
        this.send(res, err.status, { error: { code: err.code, message: err.message, ...err.extra } });
        if (err.status === 413) req.destroy();
        return;
      }
      this.deps.running.events.warn({ event: 'admin.internal_error', err: String((err as Error)?.stack ?? err) }, 'admin API error');
      if (!res.headersSent) this.send(res, 500, { error: { code: 'internal_error', message: 'internal error' } });
    }
  }

  private async test(b: Record<string, unknown>): Promise<unknown> {
    const { running, config } = this.deps;
    if (typeof b.destination !== 'string') throw new HttpError(400, 'bad_request', 'destination is required (a URL or host:port)');
    for (const key of ['tool', 'server', 'policy'] as const) {
      if (b[key] !== undefined && b[key] !== null && typeof b[key] !== 'string') throw new HttpError(400, 'bad_request', `${key} must be a string`);
    }
    let resolve: Array<[string, string[]]> = [];
    if (b.resolve !== undefined) {
      if (typeof b.resolve !== 'object' || b.resolve === null || Array.isArray(b.resolve)) throw new HttpError(400, 'bad_request', 'resolve must be an object {host: [ip, ...]}');
      resolve = Object.entries(b.resolve as Record<string, unknown>).map(([host, ips]) => {
        if (!Array.isArray(ips) || !ips.every((i) => typeof i === 'string')) throw new HttpError(400, 'bad_request', `resolve.${host} must be a list of IP strings`);
        return [host, ips as string[]];
      });
    }
    let policy = running.store.current.policy;
    if (typeof b.policy === 'string') {
      const draft = parsePolicy('draft.yaml', b.policy);
      if (!draft.spec) throw new HttpError(400, 'invalid_policy', 'the draft policy is not valid', { errors: draft.diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic) });
      policy = compilePolicy(draft.spec);
    }
    const result = await dryRun(policy, { destination: b.destination, tool: (b.tool as string | null | undefined) ?? null, server: (b.server as string | null | undefined) ?? null, resolve }, { fallback: this.deps.resolver, allowCidrs: config.baseline.allowCidrs });
    if (result.kind === 'invalid') throw new HttpError(400, 'bad_request', result.error);
    if (result.kind === 'dns_error') return { error: result.error };
    return result.decision;
  }
}
