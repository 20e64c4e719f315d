/**
 * A CONNECT tunnel through the proxy, carrying the current call's attribution headers, that
 * reads the proxy's refusal instead of dropping it. undici's ProxyAgent and https-proxy-agent
 * both discard a refused CONNECT's body (the first says only "Proxy response (403) !== 200",
 * the second replays it as if the destination had answered), so the preload opens its own.
 */
import net from 'node:net';
import tls from 'node:tls';
import { MAX_ANSWER_BYTES, proxyErrorCode, refusalFrom } from './refusal.js';

export interface TunnelRequest {
  proxy: URL;
  host: string;
  port: number;
  headers: Record<string, string>;
  /** Gives up on a proxy that does not answer the CONNECT (default 30 s). */
  timeoutMs?: number;
}

function authority(host: string, port: number): string {
  const bare = host.replace(/^\[|\]$/g, '');
  return `${net.isIPv6(bare) ? `[${bare}]` : bare}:${port}`;
}

export function proxyAuthorization(proxy: URL): Record<string, string> {
  if (!proxy.username && !proxy.password) return {};
  const credentials = `${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`;
  return { 'proxy-authorization': `Basic ${Buffer.from(credentials).toString('base64')}` };
}

export function connectToProxy(proxy: URL): net.Socket {
  const host = proxy.hostname.replace(/^\[|\]$/g, '');
  const port = Number(proxy.port || (proxy.protocol === 'https:' ? 443 : 80));
  if (proxy.protocol === 'https:')
    return tls.connect({ host, port, servername: net.isIP(host) ? undefined : host, ALPNProtocols: ['http/1.1'] });
  return net.connect({ host, port });
}

/** Resolves with the raw socket once the proxy answered 200; rejects with the proxy's answer otherwise. */
export function openTunnel(req: TunnelRequest): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = connectToProxy(req.proxy);
    const target = authority(req.host, req.port);
    const lines = [`CONNECT ${target} HTTP/1.1`, `host: ${target}`];
    for (const [k, v] of Object.entries({ ...proxyAuthorization(req.proxy), ...req.headers })) lines.push(`${k}: ${v}`);
    let settled = false;
    let received = Buffer.alloc(0);
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      socket.destroy();
      reject(err);
    };
    socket.setTimeout(req.timeoutMs ?? 30_000, () =>
      fail(new Error(`the proxy ${req.proxy.host} did not answer CONNECT ${target} in time`)),
    );
    socket.once('error', fail);
    socket.once('close', () => fail(new Error(`the proxy ${req.proxy.host} closed the connection before answering CONNECT ${target}`)));
    socket.write(`${lines.join('\r\n')}\r\n\r\n`);

    let head: { status: number; headers: Record<string, string>; bodyStart: number; length: number } | null = null;
    const onData = (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (!head) {
        const end = received.indexOf('\r\n\r\n');
        if (end === -1) {
          if (received.length > MAX_ANSWER_BYTES) fail(new Error(`the proxy's answer to CONNECT ${target} has an oversized head`));
          return;
        }
        const [statusLine = '', ...headerLines] = received.subarray(0, end).toString('latin1').split('\r\n');
        const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? NaN);
        if (!Number.isInteger(status)) return fail(new Error(`the proxy's answer to CONNECT ${target} is not HTTP`));
        const headers: Record<string, string> = {};
        for (const line of headerLines) {
          const colon = line.indexOf(':');
          if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
        }
        head = { status, headers, bodyStart: end + 4, length: Math.min(Number(headers['content-length'] ?? 0) || 0, MAX_ANSWER_BYTES) };
        if (status === 200) {
          settled = true;
          socket.removeListener('data', onData);
          socket.removeAllListeners('error');
          socket.removeAllListeners('close');
          socket.setTimeout(0);
          socket.pause();
          const rest = received.subarray(head.bodyStart);
          if (rest.length > 0) socket.unshift(rest);
          resolve(socket);
          return;
        }
      }
      if (received.length - head.bodyStart >= head.length) finish();
    };
    const finish = () => {
      if (!head || settled) return;
      const body = received.subarray(head.bodyStart, head.bodyStart + head.length).toString('utf8');
      fail(refusalFrom(head.status, proxyErrorCode(head.headers) ?? 'proxy_error', body));
    };
    socket.on('data', onData);
    // An answer without content-length ends with the connection.
    socket.once('end', finish);
  });
}
