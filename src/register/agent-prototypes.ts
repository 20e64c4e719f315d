/**
 * Agents a program builds itself would dial directly: `new https.Agent({ keepAlive: true })` in
 * an SDK, agentkeepalive, or proxy-agent's own direct agent once the preload has moved the proxy
 * variables out of its sight. The preload patches the base classes: a connection such an agent
 * opens goes through a CONNECT tunnel carrying the current call's attribution (a refusal fails
 * the request with its reason), and pools are keyed per tool call, so a kept-alive socket never
 * carries another call's traffic. Left alone: Unix sockets, NO_PROXY destinations, agents that
 * bring their own createConnection (proxy agents, the preload's own), and the preload's direct
 * agents.
 */
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import tls from 'node:tls';
import { bypassesProxy } from './no-proxy.js';
import { openTunnel } from './tunnel.js';

const DIRECT = Symbol('mcp-egress-proxy.direct-agent');

/** An agent the preload itself uses to dial directly (NO_PROXY). */
export function markDirect<T extends http.Agent>(agent: T): T {
  (agent as unknown as Record<symbol, boolean>)[DIRECT] = true;
  return agent;
}

type ConnectOptions = tls.ConnectionOptions & {
  host?: string;
  hostname?: string;
  port?: number | string;
  path?: string | null;
  socketPath?: string;
};
type Callback = (err: Error | null, socket?: net.Socket) => void;
type CreateConnection = (this: http.Agent, options: ConnectOptions, callback?: Callback) => net.Socket | undefined;

export function routeAgentsBuiltByTheProgram(
  route: { http: URL; https: URL; noProxy: string },
  headers: () => Record<string, string>,
  callId: () => string | null,
): void {
  const httpProto = http.Agent.prototype as unknown as { createConnection: CreateConnection; getName: (o?: unknown) => string };
  const httpsProto = https.Agent.prototype as unknown as { createConnection: CreateConnection };

  const through = (original: CreateConnection, secure: boolean): CreateConnection =>
    function (this: http.Agent, options, callback) {
      const host = String(options.hostname ?? options.host ?? 'localhost');
      const port = Number(options.port ?? (secure ? 443 : 80));
      // No callback: the caller needs a socket now and a tunnel is asynchronous (not Node's own Agent).
      if (
        (this as unknown as Record<symbol, boolean>)[DIRECT] ||
        options.socketPath ||
        options.path ||
        !callback ||
        bypassesProxy(route.noProxy, host, port)
      ) {
        return original.call(this, options, callback);
      }
      const { path: _path, socketPath: _socketPath, host: _host, port: _port, ...tlsOptions } = options;
      openTunnel({ proxy: secure ? route.https : route.http, host, port, headers: headers() }).then(
        // openTunnel hands the socket over paused; nothing arrives before the request is written.
        (socket) =>
          callback(null, secure ? tls.connect({ ...tlsOptions, socket, servername: options.servername ?? host }) : socket.resume()),
        (err: Error) => callback(err),
      );
      return undefined;
    };
  httpsProto.createConnection = through(httpsProto.createConnection, true);
  httpProto.createConnection = through(httpProto.createConnection, false);

  // https.Agent's getName calls http.Agent.prototype.getName: one patch keys both per call.
  const getName = httpProto.getName;
  httpProto.getName = function (this: http.Agent, options?: unknown) {
    const name = getName.call(this, options);
    const id = callId();
    return id ? `${name}:mcp-call=${id}` : name;
  };
}
