/**
 * The global undici dispatcher the preload installs (Node 20's fetch uses it): each tool call
 * gets its own proxy connections, so a pooled connection never carries one call's traffic under
 * another's attribution. Per call: plain-HTTP origins go to the proxy in absolute form; HTTPS
 * origins go through our own CONNECT tunnel (tunnel.ts), so a refusal's reason survives;
 * NO_PROXY origins are dialled directly. A proxy answer to a plain-HTTP request fails the
 * request with the refusal (refusal.ts) instead of passing as the destination's response.
 */
import { Agent, Dispatcher, ProxyAgent, buildConnector } from 'undici';
import { bypassesProxy } from './no-proxy.js';
import { EgressRefusedError, MAX_ANSWER_BYTES, proxyErrorCode, refusalFrom } from './refusal.js';
import { openTunnel } from './tunnel.js';

export interface Route {
  http: URL;
  https: URL;
  noProxy: string;
}

/** An undici connector: TLS to the origin inside a CONNECT tunnel with the call's headers. */
function tunnelConnector(proxy: URL, headers: Record<string, string>): buildConnector.connector {
  const tlsUpgrade = buildConnector({});
  return (opts, callback) => {
    openTunnel({ proxy, host: opts.hostname, port: Number(opts.port || 443), headers }).then(
      (socket) => tlsUpgrade({ ...opts, httpSocket: socket }, callback),
      (err: Error) => callback(err, null),
    );
  };
}

/** The agents one call (or the unattributed rest of the process) uses. */
class CallAgents {
  readonly plain: ProxyAgent;
  readonly tunnel: Agent;
  constructor(route: Route, headers: Record<string, string>) {
    this.plain = new ProxyAgent({ uri: route.http.href, headers, proxyTunnel: false });
    this.tunnel = new Agent({ connect: tunnelConnector(route.https, headers) });
  }
  close(): Promise<unknown> {
    return Promise.all([this.plain.close(), this.tunnel.close()]);
  }
  destroy(): Promise<unknown> {
    return Promise.all([this.plain.destroy(), this.tunnel.destroy()]);
  }
}

type Headers = Record<string, string | string[] | undefined>;

function rawHeadersToObject(raw: unknown[]): Headers {
  const out: Headers = {};
  for (let i = 0; i + 1 < raw.length; i += 2) out[String(raw[i]).toLowerCase()] = String(raw[i + 1]);
  return out;
}

/**
 * Wraps a dispatch handler so that an answer from the proxy (x-egress-error) ends the request
 * with an EgressRefusedError instead of a response. Handles undici's legacy handler shape (what
 * Node 20's fetch passes) and the newer one.
 */
function failOnProxyAnswer(handler: Dispatcher.DispatchHandler): Dispatcher.DispatchHandler {
  let refused: { status: number; code: string; body: Buffer[]; size: number } | null = null;
  const collect = (chunk: Buffer) => {
    if (refused && refused.size < MAX_ANSWER_BYTES) {
      refused.body.push(chunk);
      refused.size += chunk.length;
    }
  };
  const error = () => {
    const r = refused as NonNullable<typeof refused>;
    return refusalFrom(r.status, r.code, Buffer.concat(r.body).toString('utf8'));
  };
  const h = handler as Record<string, (...args: unknown[]) => unknown>;
  const overrides: Record<string, (...args: unknown[]) => unknown> = {
    // legacy shape
    onHeaders: (status, raw, resume, text) => {
      const code = proxyErrorCode(rawHeadersToObject(raw as unknown[]));
      if (code) {
        refused = { status: status as number, code, body: [], size: 0 };
        return true;
      }
      return h.onHeaders!.call(handler, status, raw, resume, text);
    },
    onData: (chunk) => (refused ? (collect(chunk as Buffer), true) : h.onData!.call(handler, chunk)),
    // undici's ProxyAgent answers a 407 itself, before this wrapper sees the headers.
    onError: (err) =>
      h.onError!.call(
        handler,
        err instanceof Error && err.message === 'Proxy Authentication Required (407)' ? refusalFrom(407, 'proxy_auth_required', '') : err,
      ),
    onComplete: (trailers) => (refused ? h.onError!.call(handler, error()) : h.onComplete!.call(handler, trailers)),
    // newer shape
    onResponseStart: (controller, status, headers, text) => {
      const code = proxyErrorCode(headers as Headers);
      if (code) {
        refused = { status: status as number, code, body: [], size: 0 };
        return;
      }
      return h.onResponseStart!.call(handler, controller, status, headers, text);
    },
    onResponseData: (controller, chunk) => (refused ? collect(chunk as Buffer) : h.onResponseData!.call(handler, controller, chunk)),
    onResponseEnd: (controller, trailers) =>
      refused ? h.onResponseError!.call(handler, controller, error()) : h.onResponseEnd!.call(handler, controller, trailers),
  };
  // A plain object (not a Proxy): undici's ProxyAgent reassigns handler.onHeaders on what it is given.
  const wrapper: Record<string, unknown> = {};
  for (let o: object | null = handler; o && o !== Object.prototype; o = Object.getPrototypeOf(o) as object | null) {
    for (const key of Object.getOwnPropertyNames(o)) {
      if (key === 'constructor' || key in wrapper) continue;
      const value = (handler as Record<string, unknown>)[key];
      if (typeof value === 'function')
        wrapper[key] =
          key in overrides ? overrides[key] : (...args: unknown[]) => (value as (...a: unknown[]) => unknown).apply(handler, args);
    }
  }
  return wrapper;
}

/** Routes each fetch to the agents of the tool call it runs in. */
export class AttributingDispatcher extends Dispatcher {
  private readonly perCall = new Map<string, CallAgents>();
  private readonly base: CallAgents;
  private readonly direct = new Agent();

  constructor(
    private readonly route: Route,
    private readonly callHeaders: () => { callId: string; headers: Record<string, string> } | null,
  ) {
    super();
    this.base = new CallAgents(route, {});
  }

  override dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const origin = new URL(String(options.origin));
    const port = Number(origin.port || (origin.protocol === 'https:' ? 443 : 80));
    if (bypassesProxy(this.route.noProxy, origin.hostname, port)) return this.direct.dispatch(options, handler);
    const call = this.callHeaders();
    let agents = this.base;
    if (call) {
      agents = this.perCall.get(call.callId) ?? new CallAgents(this.route, call.headers);
      this.perCall.set(call.callId, agents);
    }
    if (origin.protocol === 'https:') return agents.tunnel.dispatch(options, handler);
    return agents.plain.dispatch(options, failOnProxyAnswer(handler));
  }

  endCall(callId: string): void {
    const agents = this.perCall.get(callId);
    if (!agents) return;
    this.perCall.delete(callId);
    // Graceful: lets requests still in flight (a streamed body) finish first.
    void agents.close().catch(() => {});
  }

  override async close(): Promise<void> {
    await Promise.all([this.base.close(), this.direct.close(), ...[...this.perCall.values()].map((a) => a.close())]);
  }

  override async destroy(): Promise<void> {
    await Promise.all([this.base.destroy(), this.direct.destroy(), ...[...this.perCall.values()].map((a) => a.destroy())]);
  }
}

/**
 * fetch reports every network failure as TypeError('fetch failed') and many servers show only
 * that message: when the cause is a proxy refusal, the message names it (type and cause kept).
 */
export function nameRefusalsInFetchErrors(): void {
  const original = globalThis.fetch;
  if (typeof original !== 'function') return;
  const wrapped = function fetch(this: unknown, ...args: Parameters<typeof original>) {
    return original.apply(this, args).catch((err: unknown) => {
      if (err instanceof TypeError && err.cause instanceof EgressRefusedError && err.message === 'fetch failed')
        err.message = `fetch failed: ${err.cause.message}`;
      throw err;
    });
  };
  globalThis.fetch = wrapped;
}
