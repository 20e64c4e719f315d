/**
 * Announces a tool call to the proxy as it starts (interface.md "Session history", source 3):
 * `POST /mcp-egress/v1/calls` in origin form to the proxy itself, on a socket of its own (not
 * through the agents the preload routes), with the proxy URL's credentials so the announcement
 * carries the same client identity as the call's connections. A call that never touches the
 * network (`read_file`) thus becomes history for a later `fetch` of the same session.
 */
import { connectToProxy, proxyAuthorization } from './tunnel.js';
import type { ToolCallContext } from './context.js';

/** The path the proxy answers itself (src/proxy/announce.ts). */
const ANNOUNCE_PATH = '/mcp-egress/v1/calls';
const MAX_HEAD_BYTES = 16 * 1024;

/** `recorded`: 204; `not_trusted`: the proxy takes only a gateway's registrations (trust: registered). */
export type AnnounceResult = 'recorded' | 'not_trusted';

export function announceCall(proxy: URL, ctx: ToolCallContext, timeoutMs = 10_000): Promise<AnnounceResult> {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ tool: ctx.tool, call_id: ctx.callId, session_id: ctx.sessionId });
    const socket = connectToProxy(proxy);
    let received = Buffer.alloc(0);
    let settled = false;
    const done = (err: Error | null, result?: AnnounceResult) => {
      if (settled) return;
      settled = true;
      socket.destroy();
      if (err) reject(err);
      else resolve(result as AnnounceResult);
    };
    socket.setTimeout(timeoutMs, () => done(new Error(`the proxy ${proxy.host} did not answer the announcement in time`)));
    socket.on('error', (err) => done(new Error(`announcing to the proxy ${proxy.host} failed: ${err.message}`)));
    socket.on('close', () => done(new Error(`the proxy ${proxy.host} closed the connection before answering the announcement`)));
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const end = received.indexOf('\r\n\r\n');
      if (end === -1) {
        if (received.length > MAX_HEAD_BYTES) done(new Error(`the proxy's answer to the announcement has an oversized head`));
        return;
      }
      const head = received.subarray(0, end).toString('latin1');
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? NaN);
      const code = /\r\nx-egress-error:[ \t]*([^\r]*)/i.exec(head)?.[1]?.trim() ?? null;
      if (status === 204) done(null, 'recorded');
      else if (status === 403 && code === 'announce_not_trusted') done(null, 'not_trusted');
      else done(new Error(`the proxy refused the announcement (${Number.isNaN(status) ? 'not HTTP' : status}${code ? ` ${code}` : ''})`));
    });
    const headers = {
      host: proxy.host,
      'content-type': 'application/json',
      'content-length': String(Buffer.byteLength(body)),
      connection: 'close',
      ...proxyAuthorization(proxy),
    };
    const lines = [`POST ${ANNOUNCE_PATH} HTTP/1.1`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
    socket.write(`${lines.join('\r\n')}\r\n\r\n${body}`);
  });
}
