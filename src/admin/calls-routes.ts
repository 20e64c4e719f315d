/**
 * Registered calls and session history (interface.md "Registered calls", "Session history"):
 * `POST /v1/calls` and `DELETE /v1/calls/{id}` (developer) register and end a tool call, which
 * decides attribution; `GET /v1/calls?client=` and `GET /v1/history?session=|server=` (viewer)
 * show them. A registration is also recorded as history for its session. The admin server has
 * checked Host, Origin and the query keys; each handler checks the role first.
 */
import type { ProxyConfig } from '../config/proxy-config.js';
import { canonicalHost } from '../net/address.js';
import type { HistoryCall } from '../policy/types.js';
import { historyKey } from '../state/types.js';
import { LABEL } from '../decide/dry-run-history.js';
import { readJsonObject } from './http-body.js';
import { badRequest, HttpError } from './http-error.js';
import type { RouteContext } from './policy-routes.js';
import { CALL_ID, canonicalClient, onlyKeys, optionalLabel } from './request-fields.js';
import type { AdminRuntime } from './runtime.js';

/** A refused registration's status: a clash, this client's cap, or the whole registry's. */
const REFUSED_REGISTRATION_STATUS = { conflict: 409, client_limit: 429, registry_full: 503 } as const;

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

/**
 * A key's live history, newest first; 503 `state_unavailable` when the store cannot vouch for
 * it (a bound dropped calls still inside the window, or a shared store is down or slow).
 */
export async function readHistory(history: AdminRuntime['history'], key: string): Promise<readonly HistoryCall[]> {
  let calls: readonly HistoryCall[] | null;
  try {
    calls = await history.read(key, Date.now());
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

/** `POST /v1/calls`: registers a tool call for a client (201), recorded as its session's history. */
export async function registerCall(ctx: RouteContext, running: AdminRuntime, config: ProxyConfig): Promise<void> {
  ctx.requireRole('developer');
  const b = await readJsonObject(ctx.req);
  onlyKeys(b, ['call_id', 'tool', 'client', 'session_id', 'ttl_ms']);
  const callId = b.call_id;
  if (typeof callId !== 'string' || !CALL_ID.test(callId)) throw badRequest('call_id must be 1 to 256 visible ASCII characters');
  const tool = optionalLabel(b, 'tool');
  const client = optionalLabel(b, 'client');
  if (tool === null) throw badRequest('tool is required (a string of 1 to 256 characters)');
  if (client === null) throw badRequest('client is required (a proxy user name or a source IP)');
  const sessionId = optionalLabel(b, 'session_id');
  if (b.ttl_ms !== undefined && (typeof b.ttl_ms !== 'number' || !Number.isInteger(b.ttl_ms) || b.ttl_ms < 1 || b.ttl_ms > 86_400_000)) {
    throw badRequest('ttl_ms must be an integer from 1 to 86400000');
  }
  // With auth.users every client is identified by its user name: a registration for
  // anything else could never match a connection, so it is refused as a mistake.
  const users = config.auth.users;
  if (users.length > 0 && !users.some((u) => u.name === client))
    throw badRequest(`client '${client}' is not a proxy user (auth.users); with users configured, clients are identified by user name`);
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
  ctx.send(201, {
    call_id: registered.callId,
    tool: registered.tool,
    client: registered.client,
    session_id: registered.sessionId,
    expires_at: new Date(registered.expiresAt).toISOString(),
  });
}

/** `GET /v1/calls?client=`: one client's open registrations (the console's Calls view), looked up as the data path does. */
export async function listCalls(ctx: RouteContext, running: AdminRuntime): Promise<void> {
  ctx.requireRole('viewer');
  const client = ctx.query.get('client');
  if (client === null || !LABEL.test(client)) throw badRequest('client is required (?client=USER or a source IP)');
  const canonical = canonicalHost(client);
  const calls = await running.registry.open(canonical.kind === 'ip' ? canonical.host : client);
  ctx.send(200, {
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

/** `DELETE /v1/calls/{id}`: ends a registered call (204), 404 when there is none. */
export async function endCall(ctx: RouteContext, running: AdminRuntime): Promise<void> {
  ctx.requireRole('developer');
  let callId: string;
  try {
    callId = decodeURIComponent(ctx.path.slice('/v1/calls/'.length));
  } catch {
    throw badRequest('the call id in the path is not valid percent-encoded UTF-8');
  }
  if (!CALL_ID.test(callId)) throw badRequest('a call id is 1 to 256 visible ASCII characters');
  if (!(await running.registry.end(callId))) throw new HttpError(404, 'not_found', 'no such registered call');
  ctx.res.writeHead(204).end();
}

/** `GET /v1/history?session=ID|server=ID`: one key's live history, newest first. */
export async function sessionHistory(ctx: RouteContext, running: AdminRuntime): Promise<void> {
  ctx.requireRole('viewer');
  const session = ctx.query.get('session');
  const server = ctx.query.get('server');
  if ((session === null) === (server === null)) throw badRequest('give exactly one of ?session=ID or ?server=ID');
  const value = (session ?? server) as string;
  if (!LABEL.test(value))
    throw badRequest(`${session !== null ? 'session' : 'server'} must be 1 to 256 characters without control characters`);
  const key = session !== null ? historyKey(session, null) : historyKey(null, canonicalClient(value));
  const calls = await readHistory(running.history, key);
  ctx.send(200, { key, calls: calls.map(historyJson) });
}
