/**
 * The trusted half of `attribution.trust: registered`, for an MCP gateway (the component that
 * sends `tools/call` to servers). Before a call it mints an unguessable call id (128 random
 * bits), registers it with the proxy's admin API for the server's client identity with the
 * real tool name and the agent's session id, and passes both to the server in `params._meta`;
 * the server's preload uses them for the call's connections; the registration ends when the
 * call returns. Each registration is also session history (interface.md "Session history"):
 * a `read_file` sent to one server counts for a `fetch` on another in the same agent session,
 * so sequence rules (`after`) see the agent's whole session, not one server's.
 *
 * What this guarantees: a connection is attributed to a tool call only if the gateway started
 * that call, for that server, and it has not ended or expired; the tool name comes from the
 * gateway, not from the server; a forged or stale call id is refused (`unattributed`).
 * What it does not: a compromised server can still use a call id of its own while that call is
 * live (for any connection it makes during the call), and can make unattributed connections,
 * which only `*` rules match. It is attribution a gateway vouches for, not isolation between
 * the calls of one server.
 */
import { CALL_ID_META_KEY, mintCallId, SESSION_ID_META_KEY } from '../register/context.js';

export { CALL_ID_META_KEY, SESSION_ID_META_KEY } from '../register/context.js';

export interface GatewayOptions {
  /** The proxy's admin API, e.g. http://127.0.0.1:9901. */
  readonly adminUrl: string;
  /**
   * A developer-role admin token (`mcp-egress-proxy token --role developer`). Required: a
   * tokenless admin API is read-only, or the guarded server could register calls itself.
   */
  readonly token: string;
  /** The server's client identity at the proxy: its proxy user name, or its source IP. */
  readonly client: string;
  /** How long a registration may live if the call never returns (default: the proxy's). */
  readonly ttlMs?: number;
  /**
   * The agent's session id, the same for every server of one agent (default: a random one per
   * gateway). A call may name another in `params._meta["mcp-egress-proxy/session_id"]`.
   */
  readonly sessionId?: string;
}

export interface ToolCaller<P, R> {
  callTool(params: P, ...rest: never[]): Promise<R>;
}

export interface Gateway {
  /** Registers a call id for `tool`; returns it. */
  register(tool: string, options?: { ttlMs?: number; sessionId?: string }): Promise<string>;
  /** Ends a registration (ignores one that already expired). */
  end(callId: string): Promise<void>;
  /** The session id calls are registered with unless they name one. */
  readonly sessionId: string;
  /**
   * Calls a tool through an MCP client with a registered call id and the session id in
   * `params._meta` (the session: `params._meta["mcp-egress-proxy/session_id"]`, else the gateway's).
   */
  callTool<P extends { name: string; _meta?: Record<string, unknown> }, R>(
    client: ToolCaller<P, R>,
    params: P,
    ...rest: never[]
  ): Promise<R>;
}

export function createGateway(options: GatewayOptions): Gateway {
  const base = options.adminUrl.replace(/\/$/, '');
  const headers: Record<string, string> = { 'content-type': 'application/json', authorization: `Bearer ${options.token}` };
  const sessionId = options.sessionId ?? mintCallId();
  const gateway: Gateway = {
    sessionId,
    async register(tool, extra = {}) {
      const callId = mintCallId();
      const ttl = extra.ttlMs ?? options.ttlMs;
      const res = await fetch(`${base}/v1/calls`, {
        method: 'POST',
        headers,
        body: JSON.stringify({
          call_id: callId,
          tool,
          client: options.client,
          ...(extra.sessionId ? { session_id: extra.sessionId } : {}),
          ...(ttl ? { ttl_ms: ttl } : {}),
        }),
      });
      if (res.status !== 201) throw new Error(`mcp-egress-proxy gateway: registering a call failed (${res.status}): ${await res.text()}`);
      return callId;
    },
    async end(callId) {
      const res = await fetch(`${base}/v1/calls/${encodeURIComponent(callId)}`, { method: 'DELETE', headers });
      if (res.status !== 204 && res.status !== 404) throw new Error(`mcp-egress-proxy gateway: ending a call failed (${res.status})`);
    },
    async callTool(client, params, ...rest) {
      const named = params._meta?.[SESSION_ID_META_KEY];
      const session = typeof named === 'string' ? named : sessionId;
      const callId = await gateway.register(params.name, { sessionId: session });
      try {
        return await client.callTool(
          { ...params, _meta: { ...params._meta, [CALL_ID_META_KEY]: callId, [SESSION_ID_META_KEY]: session } },
          ...rest,
        );
      } finally {
        await gateway.end(callId);
      }
    },
  };
  return gateway;
}
