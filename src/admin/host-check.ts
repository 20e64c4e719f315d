/**
 * Which requests the admin API answers at all, by their `Host` and `Origin` headers.
 *
 * Threat: a web page in a browser on the same host. By DNS rebinding it points a name of its
 * own (`evil.example`) at 127.0.0.1 and talks to the admin listener as "same origin"; the
 * browser then sends `Host: evil.example:9901`. Or it simply posts cross-site to
 * `http://127.0.0.1:9901` (a "simple" request needs no preflight); the browser then sends an
 * `Origin` naming the page. Tokens stop a page that has none, but not a tokenless viewer read,
 * and a console user's browser holds a token.
 *
 * Rules: `Host` must name the listener itself (its address and port; `localhost` and the
 * loopback literals when it listens on loopback; any of the host's own addresses when it
 * listens on a wildcard) or a name in `admin.allowed_hosts` (any port), else 421. An `Origin`,
 * when present, must name the same authority as `Host` (scheme http or https), else 403; no
 * `Origin` (curl, scripts, probes) is fine. Scope: headers only; who may do what is roles'.
 */
import { canonicalHost, isLoopbackIp } from '../net/address.js';
import { interfaceAddresses, isUnspecifiedAddress } from '../net/self.js';
import type { Listener } from '../net/self.js';

export interface HostCheckOptions {
  /** The bound listener, canonical (null before listen). */
  readonly listener: () => Listener | null;
  /** `admin.allowed_hosts`, canonical. */
  readonly allowedHosts: readonly string[];
  /** The host's own addresses (default: its interfaces), for a wildcard listener. */
  readonly localAddresses?: () => ReadonlySet<string>;
}

interface Authority {
  /** Canonical host: an IP's canonical text or a lower-case DNS name. */
  readonly host: string;
  readonly kind: 'ip' | 'name';
  readonly loopback: boolean;
  /** The port written, or null when none was. */
  readonly port: number | null;
}

const AUTHORITY = /^(\[[^\]]*\]|[^:[\]]+)(?::([0-9]{1,5}))?$/;

/** `host[:port]` or `[v6][:port]` as in a Host header; null when it is not one. */
export function parseAuthority(text: string): Authority | null {
  const m = AUTHORITY.exec(text);
  if (!m) return null;
  const h = canonicalHost(m[1] as string);
  if (h.kind === 'error') return null;
  const port = m[2] === undefined ? null : Number(m[2]);
  if (port !== null && (port < 1 || port > 65535)) return null;
  return { host: h.host, kind: h.kind, loopback: h.kind === 'ip' ? isLoopbackIp(h.ip) : false, port };
}

export type HostVerdict =
  { readonly ok: true } | { readonly ok: false; readonly status: 421 | 403; readonly code: string; readonly message: string };

export function createHostCheck(options: HostCheckOptions): (host: string | undefined, origin: string | undefined) => HostVerdict {
  const localAddresses = options.localAddresses ?? interfaceAddresses();
  const allowed = new Set(options.allowedHosts);

  const namesListener = (a: Authority): boolean => {
    if (a.kind === 'name' && allowed.has(a.host)) return true;
    const l = options.listener();
    if (!l || (a.port ?? 80) !== l.port) return false;
    const wildcard = isUnspecifiedAddress(l.address);
    const bound = canonicalHost(l.address);
    const onLoopback = wildcard || (bound.kind === 'ip' && isLoopbackIp(bound.ip));
    if (a.kind === 'name') return a.host === 'localhost' && onLoopback;
    if (a.host === l.address) return true;
    return wildcard && (a.loopback || localAddresses().has(a.host));
  };

  return (hostHeader, origin) => {
    const host = hostHeader === undefined ? null : parseAuthority(hostHeader);
    if (!host || !namesListener(host)) {
      return {
        ok: false,
        status: 421,
        code: 'misdirected_request',
        message: `this admin API does not answer for Host '${hostHeader ?? ''}' (its own address, or a name in admin.allowed_hosts)`,
      };
    }
    if (origin === undefined) return { ok: true };
    const refused = {
      ok: false,
      status: 403,
      code: 'forbidden_origin',
      message: `cross-origin requests are refused (Origin '${origin.slice(0, 200)}')`,
    } as const;
    const m = /^(https?):\/\/(.+)$/i.exec(origin);
    const from = m ? parseAuthority(m[2] as string) : null;
    if (!m || !from) return refused;
    // A Host without a port took the scheme's default; compare what the browser compared.
    const defaultPort = (m[1] as string).toLowerCase() === 'https' ? 443 : 80;
    const sameHost = from.host === host.host;
    const samePort = (from.port ?? defaultPort) === (host.port ?? defaultPort);
    return sameHost && samePort ? { ok: true } : refused;
  };
}

/**
 * The API (`/v1/`) refuses what a browser marks as fetched for another site's page
 * (`Sec-Fetch-Site: cross-site` or `same-site`, ports not counting): an `<iframe>` or a
 * navigation carries no `Origin`, so without this a page on the same host could open the
 * tokenless viewer's event streams or read nothing but hold them (all 16). The console's own
 * requests are `same-origin`; a typed URL is `none`; curl and scripts send no such header.
 */
export function checkFetchSite(secFetchSite: string | undefined): HostVerdict {
  if (secFetchSite === undefined || secFetchSite === 'same-origin' || secFetchSite === 'none') return { ok: true };
  return {
    ok: false,
    status: 403,
    code: 'forbidden_origin',
    message: `requests made for another site's page are refused (Sec-Fetch-Site '${secFetchSite.slice(0, 40)}')`,
  };
}
