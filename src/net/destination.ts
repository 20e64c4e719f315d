/**
 * Destinations as clients write them: a CONNECT authority (`host:port`), an absolute-form URL
 * (`http://host:port/path`), a Host header, or a CLI argument. Each is split strictly and its
 * host canonicalised once (address.ts); the result is what the policy, the resolver, the dial
 * and the events all use. Anything odd is a `bad_request`, never a guess.
 */
import { canonicalHost } from './address.js';
import type { CanonicalHost } from './address.js';

export interface Target {
  readonly host: CanonicalHost;
  readonly port: number;
}

export type TargetResult = Target | { readonly error: string };

const PORT = /^[0-9]{1,5}$/;

function parsePort(text: string): number | null {
  if (!PORT.test(text)) return null;
  const port = Number(text);
  return port >= 1 && port <= 65535 ? port : null;
}

/**
 * `host:port`, `[v6]:port`, or (with a default port) a bare host. Userinfo, paths and anything
 * after the port are refused.
 */
export function parseAuthority(authority: string, defaultPort: number | null): TargetResult {
  if (authority.length === 0) return { error: 'empty authority' };
  if (authority.includes('@')) return { error: 'userinfo is not allowed in the target' };
  let hostText: string;
  let portText: string | null = null;
  if (authority.startsWith('[')) {
    const close = authority.indexOf(']');
    if (close === -1) return { error: 'unterminated IPv6 literal' };
    hostText = authority.slice(0, close + 1);
    const rest = authority.slice(close + 1);
    if (rest !== '') {
      if (!rest.startsWith(':')) return { error: 'unexpected text after IPv6 literal' };
      portText = rest.slice(1);
    }
  } else {
    const colon = authority.lastIndexOf(':');
    if (colon !== -1) {
      hostText = authority.slice(0, colon);
      portText = authority.slice(colon + 1);
      if (hostText.includes(':')) return { error: 'IPv6 literals must be in brackets' };
    } else hostText = authority;
  }
  let port: number | null;
  if (portText === null) port = defaultPort;
  else port = parsePort(portText);
  if (port === null) return { error: portText === null ? 'a port is required' : `invalid port '${portText}'` };
  const host = canonicalHost(hostText);
  if (host.kind === 'error') return { error: host.error };
  return { host, port };
}

export interface AbsoluteUrl {
  readonly target: Target;
  /** The authority as written (for the Host header comparison). */
  readonly authority: string;
  /** Path and query, at least '/'. */
  readonly path: string;
}

const ABSOLUTE = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^#]*)/;

/** An absolute-form request target. Only `http:` is proxied in the clear; https goes by CONNECT. */
export function parseAbsoluteUrl(url: string): AbsoluteUrl | { readonly error: string } {
  const m = ABSOLUTE.exec(url);
  if (!m) return { error: 'the request target must be an absolute http:// URL' };
  const scheme = (m[1] as string).toLowerCase();
  if (scheme !== 'http') return { error: `scheme '${scheme}' is not proxied in absolute form (use CONNECT for https)` };
  const authority = m[2] as string;
  const target = parseAuthority(authority, 80);
  if ('error' in target) return target;
  const rest = m[3] as string;
  const path = rest === '' ? '/' : rest.startsWith('/') ? rest : `/${rest}`;
  return { target, authority, path };
}

/** Whether two targets name the same authority (a default port written or omitted is the same). */
export function sameAuthority(a: Target, b: Target): boolean {
  return a.host.host === b.host.host && a.port === b.port;
}

/** A CLI destination: a URL (`https://h/` is port 443, `http://h/` port 80) or `host:port`. */
export function parseDestinationArg(arg: string): TargetResult {
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)/.exec(arg);
  if (m) {
    const scheme = (m[1] as string).toLowerCase();
    const defaultPort = scheme === 'https' ? 443 : scheme === 'http' ? 80 : null;
    if (defaultPort === null) return { error: `unsupported scheme '${scheme}' (http or https)` };
    return parseAuthority(m[2] as string, defaultPort);
  }
  return parseAuthority(arg, null);
}
