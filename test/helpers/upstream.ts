/** Upstream servers for integration tests: they record every connection and request they see. */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { createServer as createNetServer } from 'node:net';
import type { AddressInfo } from 'node:net';

export const TLS = {
  ca: readFileSync(new URL('../fixtures/ca.pem', import.meta.url)),
  cert: readFileSync(new URL('../fixtures/server.pem', import.meta.url)),
  key: readFileSync(new URL('../fixtures/server.key', import.meta.url)),
};
export const CA_PATH = new URL('../fixtures/ca.pem', import.meta.url).pathname;

export interface SeenRequest {
  method: string;
  url: string;
  rawHeaders: string[];
  body: string;
  localAddress: string;
  servername?: string;
}

export interface TestUpstream {
  readonly host: string;
  readonly port: number;
  readonly connections: Array<{ localAddress: string; remoteAddress: string }>;
  readonly requests: SeenRequest[];
  close(): Promise<void>;
}

type Respond = (req: IncomingMessage, res: ServerResponse, body: string) => void;

const defaultRespond: Respond = (req, res, body) => {
  res.setHeader('content-type', 'application/json');
  res.setHeader('x-egress-error', 'forged-by-upstream');
  res.setHeader('x-egress-rule', 'forged');
  res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.rawHeaders, body }));
};

export async function startUpstream(host = '127.0.0.1', options: { tls?: boolean; respond?: Respond } = {}): Promise<TestUpstream> {
  const connections: TestUpstream['connections'] = [];
  const requests: SeenRequest[] = [];
  const respond = options.respond ?? defaultRespond;
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (body += c));
    req.on('end', () => {
      const tlsSocket = req.socket as { servername?: string };
      requests.push({
        method: req.method ?? '',
        url: req.url ?? '',
        rawHeaders: req.rawHeaders,
        body,
        localAddress: req.socket.localAddress ?? '',
        servername: tlsSocket.servername,
      });
      respond(req, res, body);
    });
  };
  const server = options.tls ? createTlsServer({ cert: TLS.cert, key: TLS.key }, handler) : createServer(handler);
  server.on(options.tls ? 'secureConnection' : 'connection', (s: { localAddress?: string; remoteAddress?: string }) => {
    connections.push({ localAddress: s.localAddress ?? '', remoteAddress: s.remoteAddress ?? '' });
  });
  await new Promise<void>((resolve) => server.listen(0, host, () => resolve()));
  return {
    host,
    port: (server.address() as AddressInfo).port,
    connections,
    requests,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A raw TCP listener that only counts connections (a fake metadata or internal service). */
export async function startTrap(
  host: string,
  port = 0,
): Promise<{ host: string; port: number; connections: number; close(): Promise<void> }> {
  const trap = { host, port: 0, connections: 0, close: async () => {} };
  const server = createNetServer((socket) => {
    trap.connections++;
    socket.resume(); // drain, so the peer's FIN is seen and the socket closes
    socket.end('HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret');
  });
  await new Promise<void>((resolve) => server.listen(port, host, () => resolve()));
  trap.port = (server.address() as AddressInfo).port;
  trap.close = () => new Promise((resolve) => server.close(() => resolve()));
  return trap;
}
