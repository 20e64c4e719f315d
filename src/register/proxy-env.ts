/**
 * Where the preload sends traffic, read from the environment, and the fail-closed start.
 *
 * Threat: a server started "under the preload" that silently runs without it (no proxy variable,
 * a typo in the URL) egresses directly and unattributed while the operator believes it is
 * guarded; and an error line that echoes the proxy URL leaks its password into the client's log.
 * So: no usable proxy → refuse to start (EX_CONFIG), unless the operator opts out by name
 * (MCP_EGRESS_ALLOW_DIRECT=1), which prints a warning; messages never print a variable's value.
 *
 * The standard variables are also read by some HTTP libraries themselves (axios, proxy-agent),
 * which then proxy a second time around the preload's agents or open unattributed tunnels. Once
 * captured, they are moved to MCP_EGRESS_* names no library reads (hideProxyVariables); a child
 * Node process that inherits NODE_OPTIONS reads them back from there.
 */

export const EX_CONFIG = 78;
export const ALLOW_DIRECT_VAR = 'MCP_EGRESS_ALLOW_DIRECT';

/** The standard names, in the order they are read (upper case first, as curl and undici do). */
const HTTPS_NAMES = ['HTTPS_PROXY', 'https_proxy', 'MCP_EGRESS_HTTPS_PROXY'] as const;
const HTTP_NAMES = ['HTTP_PROXY', 'http_proxy', 'MCP_EGRESS_HTTP_PROXY'] as const;
const NO_PROXY_NAMES = ['NO_PROXY', 'no_proxy', 'MCP_EGRESS_NO_PROXY'] as const;
/** Variables libraries read to pick a proxy by themselves. */
const LIBRARY_READ = ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy', 'NO_PROXY', 'no_proxy'] as const;

export type ProxySettings =
  { kind: 'proxy'; https: URL; http: URL; noProxy: string } | { kind: 'direct' } | { kind: 'refuse'; message: string };

type Env = Record<string, string | undefined>;

function first(env: Env, names: readonly string[]): { name: string; value: string } | null {
  for (const name of names) {
    const value = env[name];
    if (value !== undefined && value.trim() !== '') return { name, value: value.trim() };
  }
  return null;
}

/** A proxy URL, or why not: the reason never contains the value (it may hold a password). */
function parseProxyUrl(name: string, value: string): URL | string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return `${name} is not a valid URL (its value is not shown: it may contain a password)`;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return `${name} must be an http:// or https:// proxy URL, not ${url.protocol}`;
  if (!url.hostname) return `${name} has no host`;
  if (url.pathname !== '/' || url.search || url.hash)
    return `${name} must name only the proxy (scheme, optional credentials, host and port), not a path`;
  return url;
}

export function readProxySettings(env: Env): ProxySettings {
  const httpsVar = first(env, HTTPS_NAMES);
  const httpVar = first(env, HTTP_NAMES);
  if (!httpsVar && !httpVar) {
    if (env[ALLOW_DIRECT_VAR] === '1') return { kind: 'direct' };
    return {
      kind: 'refuse',
      message: `neither HTTPS_PROXY nor HTTP_PROXY is set, so traffic would bypass the proxy; refusing to start (set ${ALLOW_DIRECT_VAR}=1 to run unproxied on purpose)`,
    };
  }
  const https = httpsVar ? parseProxyUrl(httpsVar.name, httpsVar.value) : null;
  const http = httpVar ? parseProxyUrl(httpVar.name, httpVar.value) : null;
  for (const u of [https, http])
    if (typeof u === 'string') return { kind: 'refuse', message: `${u}; refusing to start (traffic would bypass the proxy)` };
  const httpsUrl = (https ?? http) as URL;
  const httpUrl = (http ?? https) as URL;
  return { kind: 'proxy', https: httpsUrl, http: httpUrl, noProxy: first(env, NO_PROXY_NAMES)?.value ?? '' };
}

/** A proxy URL fit for a log line: the password replaced. */
export function redactProxyUrl(url: URL): string {
  return `${url.protocol}//${url.username ? `${url.username}:***@` : ''}${url.host}`;
}

/**
 * Moves the captured settings out of the names libraries read, so they dial "directly" and the
 * preload's global agent and dispatcher proxy them (with attribution, once). Child Node
 * processes that inherit NODE_OPTIONS find them again under the MCP_EGRESS_* names.
 */
export function hideProxyVariables(env: Env, settings: Extract<ProxySettings, { kind: 'proxy' }>): void {
  for (const name of LIBRARY_READ) delete env[name];
  env.MCP_EGRESS_HTTPS_PROXY = settings.https.href;
  env.MCP_EGRESS_HTTP_PROXY = settings.http.href;
  env.MCP_EGRESS_NO_PROXY = settings.noProxy;
}
