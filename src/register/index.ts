/**
 * `node --import mcp-egress-proxy/register server.js` (or through NODE_OPTIONS): makes an
 * unmodified Node ≥ 20 program send its `fetch`, `http` and `https` requests through the proxy
 * named by HTTPS_PROXY / HTTP_PROXY, honouring NO_PROXY, and tags each MCP tool call.
 *
 * Node 20's built-in fetch ignores the proxy variables (support came in Node 22.21 / 24), so
 * this sets undici 7 as the global dispatcher (Node 20's fetch uses it through the shared global
 * symbol) and replaces http.globalAgent / https.globalAgent with http(s)-proxy-agent.
 *
 * Attribution: while a tool call runs (stdio.ts, or runAsToolCall), connections carry
 * x-mcp-tool / x-mcp-call-id / x-mcp-session-id. Each call gets its own proxy connections
 * (a dispatcher per call, closed when the call ends; no pooling for http/https), so two calls
 * in flight are never attributed to each other. Plain-HTTP fetches go to the proxy in absolute
 * form, so a tool sees the proxy's JSON refusal; https goes through CONNECT, whose refusal
 * clients report only as "fetch failed" (the reason is in the proxy's event log).
 *
 * Scope: code that passes its own agent or dispatcher, or opens sockets itself, is not routed;
 * the network must be contained so that the proxy is the only way out (README).
 */
import http from 'node:http';
import https from 'node:https';
import { HttpProxyAgent } from 'http-proxy-agent';
import { HttpsProxyAgent } from 'https-proxy-agent';
import { Dispatcher, EnvHttpProxyAgent, setGlobalDispatcher } from 'undici';
import { attributionHeaders, toolCalls } from './context.js';
import type { ToolCallContext } from './context.js';
import { bypassesProxy } from './no-proxy.js';
import { installStdioHooks } from './stdio.js';

export { CALL_ID_META_KEY, runAsToolCall, toolCalls } from './context.js';
export type { ToolCallContext } from './context.js';

const PREFIX = 'mcp-egress-proxy/register';
const INSTALLED = Symbol.for('mcp-egress-proxy.register');

function proxyUrl(name: string): URL | null {
  const value = process.env[name] ?? process.env[name.toLowerCase()];
  if (!value) return null;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    process.stderr.write(`${PREFIX}: ${name}=${JSON.stringify(value)} is not a URL; refusing to start (traffic would bypass the proxy)\n`);
    process.exit(78);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    process.stderr.write(`${PREFIX}: ${name} must be an http:// or https:// proxy URL, not ${url.protocol}; refusing to start\n`);
    process.exit(78);
  }
  return url;
}

/** Routes each fetch to the dispatcher of the tool call it runs in. */
class AttributingDispatcher extends Dispatcher {
  private readonly perCall = new Map<string, EnvHttpProxyAgent>();

  constructor(private readonly make: (headers?: Record<string, string>) => EnvHttpProxyAgent, private readonly base: EnvHttpProxyAgent) {
    super();
  }

  override dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const ctx = toolCalls.getStore();
    if (!ctx) return this.base.dispatch(options, handler);
    let agent = this.perCall.get(ctx.callId);
    if (!agent) {
      agent = this.make(attributionHeaders(ctx));
      this.perCall.set(ctx.callId, agent);
    }
    return agent.dispatch(options, handler);
  }

  endCall(ctx: ToolCallContext): void {
    const agent = this.perCall.get(ctx.callId);
    if (!agent) return;
    this.perCall.delete(ctx.callId);
    // Graceful: lets requests still in flight (a streamed body) finish first.
    void agent.close().catch(() => {});
  }

  override async close(): Promise<void> {
    await Promise.all([this.base.close(), ...[...this.perCall.values()].map((a) => a.close())]);
  }

  override async destroy(): Promise<void> {
    await Promise.all([this.base.destroy(), ...[...this.perCall.values()].map((a) => a.destroy())]);
  }
}

/** A global http(s) agent: the proxy agent (headers of the current call) unless NO_PROXY says direct. */
function routingAgent<T extends http.Agent>(Base: new (opts: http.AgentOptions) => T, proxied: http.Agent, noProxy: string | undefined, defaultPort: number): T {
  const direct = new Base({ keepAlive: false });
  const agent = new Base({ keepAlive: false });
  (agent as unknown as { addRequest: (req: http.ClientRequest, options: { host?: string; hostname?: string; port?: number | string }) => void }).addRequest = (req, options) => {
    const host = options.hostname ?? options.host ?? 'localhost';
    const port = Number(options.port ?? defaultPort);
    const target = bypassesProxy(noProxy, host, port) ? direct : proxied;
    (target as unknown as { addRequest: (r: http.ClientRequest, o: unknown) => void }).addRequest(req, options);
  };
  return agent;
}

function install(): void {
  const g = globalThis as Record<symbol, unknown>;
  if (g[INSTALLED]) return;
  g[INSTALLED] = true;
  const httpsProxy = proxyUrl('HTTPS_PROXY');
  const httpProxy = proxyUrl('HTTP_PROXY');
  const noProxy = process.env.NO_PROXY ?? process.env.no_proxy;
  if (!httpsProxy && !httpProxy) {
    process.stderr.write(`${PREFIX}: neither HTTPS_PROXY nor HTTP_PROXY is set; nothing is routed\n`);
    return;
  }
  const httpsTarget = (httpsProxy ?? httpProxy) as URL;
  const httpTarget = (httpProxy ?? httpsProxy) as URL;

  const make = (headers?: Record<string, string>) =>
    new EnvHttpProxyAgent({ httpProxy: httpTarget.href, httpsProxy: httpsTarget.href, noProxy: noProxy ?? '', headers, proxyTunnel: false });
  const dispatcher = new AttributingDispatcher(make, make());
  setGlobalDispatcher(dispatcher);

  const currentHeaders = () => {
    const ctx = toolCalls.getStore();
    return ctx ? attributionHeaders(ctx) : {};
  };
  // keepAlive off: the headers are read per new proxy connection, so each request gets a
  // connection of its own and the attribution of the call it runs in.
  http.globalAgent = routingAgent(http.Agent, new HttpProxyAgent(httpTarget, { headers: currentHeaders, keepAlive: false }), noProxy, 80);
  https.globalAgent = routingAgent(https.Agent, new HttpsProxyAgent(httpsTarget, { headers: currentHeaders, keepAlive: false }), noProxy, 443);

  installStdioHooks({ onCallEnd: (ctx) => dispatcher.endCall(ctx) });
  const redact = (u: URL) => `${u.protocol}//${u.username ? `${u.username}:***@` : ''}${u.host}`;
  process.stderr.write(`${PREFIX}: fetch, http and https routed through ${redact(httpsTarget)} (https) and ${redact(httpTarget)} (http)${noProxy ? `, except NO_PROXY=${noProxy}` : ''}; tool calls on stdio are attributed\n`);
}

install();
