/** Raw HTTP over a socket, for requests no client library would send (odd spellings, garbage). */
import { once } from 'node:events';
import { connect } from 'node:net';
import type { Socket } from 'node:net';

export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
  raw: string;
}

export function parseResponse(raw: string): RawResponse {
  const [head = '', ...rest] = raw.split('\r\n\r\n');
  const [statusLine = '', ...lines] = head.split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const i = line.indexOf(':');
    if (i > 0) headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
  }
  return { status: Number(statusLine.split(' ')[1] ?? 0), headers, body: rest.join('\r\n\r\n'), raw };
}

/** Sends `request` and collects everything until the proxy closes the connection (or `timeoutMs`). */
export function rawRequest(port: number, request: string | Buffer, timeoutMs = 5000): Promise<RawResponse & { closedByPeer: boolean }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let data = '';
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ ...parseResponse(data), closedByPeer: false });
    }, timeoutMs);
    socket.on('data', (d) => (data += d.toString('latin1')));
    socket.on('error', (err) => {
      clearTimeout(timer);
      if (data) resolve({ ...parseResponse(data), closedByPeer: true });
      else reject(err);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ ...parseResponse(data), closedByPeer: true });
    });
    socket.write(request);
  });
}

export const connectRequest = (authority: string, extra = '') => `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${extra}\r\n`;
export const getRequest = (url: string, host: string, extra = '') =>
  `GET ${url} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n${extra}\r\n`;

/** Opens a CONNECT tunnel through the proxy; resolves once the `200` has been read, with anything after it. */
export async function openTunnel(proxyPort: number, port: number): Promise<{ socket: Socket; rest: Buffer }> {
  const socket = connect({ host: '127.0.0.1', port: proxyPort });
  socket.write(connectRequest(`127.0.0.1:${port}`));
  let data = Buffer.alloc(0);
  while (data.indexOf('\r\n\r\n') === -1) data = Buffer.concat([data, (await once(socket, 'data'))[0] as Buffer]);
  if (!data.toString('latin1').startsWith('HTTP/1.1 200')) throw new Error(data.toString());
  return { socket, rest: data.subarray(data.indexOf('\r\n\r\n') + 4) };
}
