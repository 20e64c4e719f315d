/**
 * Client identity ("server" in rules and events): the user name of `Proxy-Authorization: Basic`
 * when the client sends one, else the client's source IP. With users configured the password is
 * checked (SHA-256, constant-time) and a missing or wrong credential is refused with 407; with
 * none configured any user name is a label (and per-client limits count by source address). The
 * header's value never reaches a log line.
 *
 * A label is bounded like every other label a client writes (the attribution headers, announced
 * tools and sessions): 1 to 256 characters without control characters, else `bad_request`.
 * Unbounded, it was written into every decision line of the client (red-team F3: an 11 KB name
 * made each line 11 KB and pushed other clients' decisions out of the console's feed).
 */
import type { ProxyUser } from '../config/proxy-config.js';
import { digestsEqual, sha256Hex } from '../config/secret-hash.js';
import { LABEL } from '../decide/dry-run-history.js';
import { isHostAddress } from '../net/host-addresses.js';

export type IdentityResult =
  | {
      readonly ok: true;
      readonly client: string;
      readonly viaCredentials: boolean;
      /**
       * What per-client limits count by: the authenticated user with users configured, else the
       * source address (every loopback one as one). Without users a user name is a label the
       * client picks, and a client writing a new one on each connection must not get a fresh
       * allowance each time.
       */
      readonly limitKey: string;
    }
  | {
      readonly ok: false;
      readonly reason: string;
      /** 407 for credentials users require; 400 for a label no one may use. */
      readonly code: 'proxy_auth_required' | 'bad_request';
    };

function parseBasic(header: string): { user: string; password: string } | null {
  const m = /^Basic[ \t]+([A-Za-z0-9+/=]+)[ \t]*$/i.exec(header);
  if (!m) return null;
  const decoded = Buffer.from(m[1] as string, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon === -1) return null;
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

/** The canonical text of a socket's remote address (IPv4-mapped IPv6 as IPv4). */
export function sourceAddress(remote: string | undefined): string {
  if (!remote) return 'unknown';
  return remote.startsWith('::ffff:') && remote.includes('.') ? remote.slice(7) : remote;
}

/** What every source on the proxy's own host (loopback or any address it holds) counts as in per-client limits. */
export const LOOPBACK_LIMIT_KEY = '127.0.0.1';

/**
 * What per-client limits count a source address as: every loopback one, and every other address
 * of this host, as 127.0.0.1, since a client on the proxy's host may bind any of them as its
 * source and would take a fresh allowance with each (red team 27: 8 tunnels per address, 32 from
 * four addresses of 127.0.0.0/8; red team 28: the same from the host's other addresses).
 */
export function limitKeyOfSource(source: string): string {
  return source.startsWith('127.') || source === '::1' || isHostAddress(source) ? LOOPBACK_LIMIT_KEY : source;
}

export function identify(
  authorization: string | undefined,
  remoteAddress: string | undefined,
  users: readonly ProxyUser[],
): IdentityResult {
  const basic = authorization ? parseBasic(authorization) : null;
  if (users.length === 0) {
    const source = sourceAddress(remoteAddress);
    const limitKey = limitKeyOfSource(source);
    if (basic && basic.user !== '') {
      if (!LABEL.test(basic.user))
        return {
          ok: false,
          code: 'bad_request',
          reason: 'the Proxy-Authorization user name must be 1 to 256 characters without control characters',
        };
      return { ok: true, client: basic.user, viaCredentials: true, limitKey };
    }
    return { ok: true, client: source, viaCredentials: false, limitKey };
  }
  // With users the name is checked against theirs (a long one matches none: 407, never a label).
  if (!basic)
    return {
      ok: false,
      code: 'proxy_auth_required',
      reason: authorization ? 'unsupported Proxy-Authorization' : 'proxy credentials required',
    };
  const digest = sha256Hex(basic.password);
  // Compare against every user so the time taken does not say which names exist.
  let match: ProxyUser | null = null;
  for (const user of users) {
    const passwordOk = digestsEqual(digest, user.passwordSha256);
    if (passwordOk && user.name === basic.user) match = user;
  }
  return match
    ? { ok: true, client: match.name, viaCredentials: true, limitKey: match.name }
    : { ok: false, code: 'proxy_auth_required', reason: 'invalid proxy credentials' };
}
