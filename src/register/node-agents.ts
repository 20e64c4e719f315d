/**
 * The preload's http.globalAgent and https.globalAgent: what `http.request`, axios, got,
 * superagent and node-fetch use when the caller passes no agent. Plain HTTP goes to the proxy in
 * absolute form (http-proxy-agent); HTTPS through our CONNECT tunnel (tunnel.ts); NO_PROXY
 * destinations directly. No keep-alive: each request gets its own proxy connection and the
 * attribution headers of the call it runs in. A proxy answer fails the request with the refusal
 * (refusal.ts) as a request 'error', which is what these libraries report as their own error.
 */
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import tls from 'node:tls';
import { HttpProxyAgent } from 'http-proxy-agent';
import { markDirect } from './agent-prototypes.js';
import { bypassesProxy } from './no-proxy.js';
import { MAX_ANSWER_BYTES, proxyErrorCode, refusalFrom } from './refusal.js';
import { openTunnel } from './tunnel.js';

type AddRequest = (req: http.ClientRequest, options: { host?: string; hostname?: string; port?: number | string }) => void;
type CreateConnection = (
  options: tls.ConnectionOptions & { host?: string; hostname?: string; port?: number | string; path?: unknown; socketPath?: unknown },
  callback: (err: Error | null, socket?: net.Socket) => void,
) => void;

/** A response the proxy gave itself becomes the request's error; other responses pass untouched. */
function failOnProxyAnswer(req: http.ClientRequest): void {
  const emit = req.emit.bind(req) as (event: string | symbol, ...args: unknown[]) => boolean;
  req.emit = ((event: string | symbol, ...args: unknown[]) => {
    const res = args[0] as http.IncomingMessage | undefined;
    const code = event === 'response' && res ? proxyErrorCode(res.headers) : null;
    if (!code || !res) return emit(event, ...args);
    const chunks: Buffer[] = [];
    let size = 0;
    res.on('data', (c: Buffer) => {
      if (size < MAX_ANSWER_BYTES) chunks.push(c);
      size += c.length;
    });
    const fail = () => {
      const err = refusalFrom(res.statusCode ?? 0, code, Buffer.concat(chunks).toString('utf8'));
      emit('error', err);
      req.destroy();
    };
    res.once('end', fail);
    res.once('error', fail);
    return true;
  }) as typeof req.emit;
}

/** https through the proxy: TLS to the destination inside a CONNECT tunnel. */
class TunnelingHttpsAgent extends https.Agent {
  constructor(
    private readonly proxy: URL,
    private readonly headers: () => Record<string, string>,
  ) {
    super({ keepAlive: false });
    (this as unknown as { createConnection: CreateConnection }).createConnection = (options, callback) => {
      const host = String(options.hostname ?? options.host ?? 'localhost');
      const port = Number(options.port ?? 443);
      const { path: _path, socketPath: _socketPath, host: _host, port: _port, ...tlsOptions } = options;
      openTunnel({ proxy: this.proxy, host, port, headers: this.headers() }).then(
        (socket) => callback(null, tls.connect({ ...tlsOptions, socket, servername: options.servername ?? host })),
        (err: Error) => callback(err),
      );
    };
  }
}

/**
 * The class of a global agent: requests go to the proxied agent unless NO_PROXY says direct. A
 * class, not an instance with a patched method, because `agent: false` (superagent's default)
 * makes Node build a one-off agent with `new globalAgent.constructor()`: that one routes too.
 */
function routingAgentClass<T extends http.Agent>(
  Base: new (opts: http.AgentOptions) => T,
  proxied: http.Agent,
  noProxy: string,
  defaultPort: number,
  interceptAnswers: boolean,
): new () => T {
  const direct = markDirect(new Base({ keepAlive: false }));
  const Routing = class extends (Base as new (opts: http.AgentOptions) => http.Agent) {
    constructor() {
      super({ keepAlive: false });
    }
    addRequest(req: http.ClientRequest, options: { host?: string; hostname?: string; port?: number | string; socketPath?: string }): void {
      const host = options.hostname ?? options.host ?? 'localhost';
      const port = Number(options.port ?? defaultPort);
      // A Unix socket (a Docker or local daemon API) is not network egress.
      if (options.socketPath || bypassesProxy(noProxy, host, port))
        return (direct as unknown as { addRequest: AddRequest }).addRequest(req, options);
      if (interceptAnswers) failOnProxyAnswer(req);
      (proxied as unknown as { addRequest: AddRequest }).addRequest(req, options);
    }
  };
  return Routing as unknown as new () => T;
}

export function installGlobalAgents(route: { http: URL; https: URL; noProxy: string }, headers: () => Record<string, string>): void {
  const HttpRouting = routingAgentClass(http.Agent, new HttpProxyAgent(route.http, { headers, keepAlive: false }), route.noProxy, 80, true);
  const HttpsRouting = routingAgentClass(https.Agent, new TunnelingHttpsAgent(route.https, headers), route.noProxy, 443, false);
  http.globalAgent = new HttpRouting();
  https.globalAgent = new HttpsRouting();
}
