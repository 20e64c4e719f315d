/**
 * Header hygiene for forwarded plain-HTTP requests and their responses. Hop-by-hop headers
 * (RFC 9110 §7.6.1) and every header named in `Connection` describe one hop and are dropped
 * both ways; so are `Proxy-*` headers (credentials for us, never for the origin) including the
 * non-standard `Proxy-Connection`, and the attribution headers. `Expect: 100-continue` is
 * answered by the proxy's own server (it sends the `100`) and so is not passed on. From
 * responses, `x-egress-*` is dropped so that an upstream cannot forge a proxy refusal.
 */
import type { IncomingHttpHeaders } from 'node:http';

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

const NONE: ReadonlySet<string> = new Set();

/**
 * Names listed in Connection header values, lower-cased, but for the hop-by-hop names dropped
 * anyway: on every request and response, and `Connection: keep-alive` builds no set.
 */
function connectionListed(raw: readonly string[]): ReadonlySet<string> {
  let listed: Set<string> | null = null;
  for (let i = 0; i < raw.length; i += 2) {
    const key = raw[i] as string;
    if (key.length !== 10 || key.toLowerCase() !== 'connection') continue;
    for (const token of (raw[i + 1] as string).split(',')) {
      const name = token.trim().toLowerCase();
      if (name && !HOP_BY_HOP.has(name)) (listed ??= new Set()).add(name);
    }
  }
  return listed ?? NONE;
}

/**
 * The request headers to send upstream, as a flat [name, value, ...] list in the client's order
 * and case, without hop-by-hop, Expect, Proxy-*, Connection-listed and `drop` headers. `host` is
 * removed too: the caller sets it.
 */
export function forwardRequestHeaders(raw: readonly string[], drop: ReadonlySet<string>): string[] {
  const listed = connectionListed(raw);
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const lower = name.toLowerCase();
    if (
      HOP_BY_HOP.has(lower) ||
      lower === 'host' ||
      lower === 'expect' ||
      lower.startsWith('proxy-') ||
      listed.has(lower) ||
      drop.has(lower)
    )
      continue;
    out.push(name, raw[i + 1] as string);
  }
  return out;
}

/** The response headers to return to the client: no hop-by-hop, Proxy-*, Connection-listed or x-egress-*. */
export function forwardResponseHeaders(raw: readonly string[]): string[] {
  const listed = connectionListed(raw);
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || lower.startsWith('proxy-') || lower.startsWith('x-egress-') || listed.has(lower)) continue;
    out.push(name, raw[i + 1] as string);
  }
  return out;
}

/** Whether a request head announces a body (`Transfer-Encoding`, or a non-zero `Content-Length`). */
export function declaresBody(headers: IncomingHttpHeaders): boolean {
  const length = headers['content-length'];
  return (length !== undefined && length !== '0') || headers['transfer-encoding'] !== undefined;
}
