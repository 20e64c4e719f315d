/**
 * The proxy configuration file (interface.md "Proxy configuration"), validated as strictly as
 * the policy: unknown keys and bad values are errors at `FILE:LINE:COL`, all reported at once.
 * Every key has a default here and in the README's table.
 *
 * Over 300 lines: one validator per key of proxy.yaml, kept together so all errors of a file are
 * reported at once; it grows by a few lines per key.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve as resolvePath } from 'node:path';
import type { Node, Pair } from 'yaml';
import { isScalar } from 'yaml';
import { canonicalHost, isLoopbackHost, parseCidr, parseIpLiteral } from '../net/address.js';
import type { Cidr } from '../net/address.js';
import { YamlSource } from './yaml.js';
import type { Diagnostic } from './yaml.js';

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

export interface AdminToken {
  readonly name: string;
  readonly sha256: string;
  readonly role: 'viewer' | 'developer';
}

export interface ProxyUser {
  readonly name: string;
  readonly passwordSha256: string;
}

export interface ProxyConfig {
  /** The file this came from (null for built-in defaults). */
  readonly file: string | null;
  readonly listen: ListenAddress;
  /** Absolute path of the policy file. */
  readonly policy: string;
  readonly admin: {
    readonly listen: ListenAddress | null;
    readonly tokens: readonly AdminToken[];
    /** Extra `Host` names the admin API answers to (canonical, lower case), besides its own address. */
    readonly allowedHosts: readonly string[];
  };
  readonly dns: { readonly servers: readonly string[]; readonly timeoutMs: number; readonly cacheMaxTtlSeconds: number };
  readonly baseline: { readonly allowCidrs: readonly Cidr[] };
  readonly attribution: {
    readonly toolHeader: string;
    readonly callHeader: string;
    readonly sessionHeader: string;
    readonly trust: 'header' | 'registered';
    /** Lifetime of a registered call when the registration names none. */
    readonly defaultTtlMs: number;
  };
  readonly auth: { readonly users: readonly ProxyUser[] };
  readonly denyStatus: number;
  readonly limits: {
    readonly maxHeaderBytes: number;
    readonly headerTimeoutMs: number;
    readonly connectTimeoutMs: number;
    readonly tunnelIdleTimeoutMs: number;
    readonly maxTunnelsPerClient: number;
    readonly maxConnections: number;
    /** Most open registered calls in all (src/attribution/registry.ts). */
    readonly maxRegisteredCalls: number;
    /** Most session-history calls kept in all (src/state/history.ts; the memory bound). */
    readonly maxHistoryCalls: number;
  };
  readonly shutdownGraceMs: number;
  /** Where registrations, history and discovered destinations live (src/state/create-state.ts). */
  readonly state: StateConfig;
  readonly log: { readonly level: 'trace' | 'debug' | 'info' | 'warn' | 'error' };
}

export interface StateConfig {
  readonly store: 'memory' | 'redis';
  /** `redis://` or `rediss://` (TLS); may hold a password, so it is never logged as written. */
  readonly redisUrl: string;
  readonly keyPrefix: string;
  /** A state read or registration slower than this counts as unavailable (fail closed). */
  readonly timeoutMs: number;
}

export const DEFAULTS = {
  listen: { host: '127.0.0.1', port: 3128 },
  adminListen: { host: '127.0.0.1', port: 9901 },
  dnsTimeoutMs: 5000,
  dnsCacheMaxTtlSeconds: 60,
  toolHeader: 'x-mcp-tool',
  callHeader: 'x-mcp-call-id',
  sessionHeader: 'x-mcp-session-id',
  registrationTtlMs: 300_000,
  denyStatus: 403,
  maxHeaderBytes: 16 * 1024,
  headerTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  tunnelIdleTimeoutMs: 300_000,
  maxTunnelsPerClient: 512,
  maxConnections: 10_000,
  maxRegisteredCalls: 100_000,
  maxHistoryCalls: 1_000_000,
  shutdownGraceMs: 10_000,
  redisUrl: 'redis://127.0.0.1:6379/0',
  keyPrefix: 'mcp-egress:',
  stateTimeoutMs: 250,
} as const;

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const SHA256_HEX = /^[0-9a-f]{64}$/;

export type ConfigResult = { readonly config: ProxyConfig; readonly diagnostics: readonly Diagnostic[] } | { readonly config: null; readonly diagnostics: readonly Diagnostic[] };

/** `HOST:PORT` with an IP literal host (`[v6]:PORT` for IPv6); port 0 picks a free port. */
export function parseListen(text: string): ListenAddress | { error: string } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):([0-9]{1,5})$/.exec(text);
  if (!m) return { error: `'${text}' is not HOST:PORT (use [::1]:PORT for IPv6)` };
  const host = (m[1] ?? m[2]) as string;
  const ip = parseIpLiteral(host);
  if (!ip || (m[1] !== undefined) !== host.includes(':')) return { error: `'${host}' is not an IP address` };
  const port = Number(m[3]);
  if (port > 65535) return { error: `port ${port} is above 65535` };
  return { host: ip.text, port };
}

/** An `admin.allowed_hosts` entry: one DNS name or IP literal, no port, no wildcard. */
function allowedHostError(text: string): string | null {
  if (/[*?]/.test(text)) return `'${text}': wildcards are not accepted (list each name)`;
  if (/^[^:[\]]+:[0-9]*$/.test(text) || /\]:/.test(text)) return `'${text}': give the name without a port (any port of a listed name is accepted)`;
  const h = canonicalHost(text);
  if (h.kind === 'error') return `'${text}' is not a host name or IP address (${h.error})`;
  return null;
}

function dnsServerError(text: string): string | null {
  const bracketed = /^\[([^\]]+)\]:([0-9]{1,5})$/.exec(text);
  if (bracketed) return parseIpLiteral(bracketed[1] as string)?.family === 6 && Number(bracketed[2]) <= 65535 && Number(bracketed[2]) > 0 ? null : `'${text}' is not a DNS server address`;
  if (parseIpLiteral(text)) return null;
  const hostPort = /^([0-9.]+):([0-9]{1,5})$/.exec(text);
  if (hostPort && parseIpLiteral(hostPort[1] as string) && Number(hostPort[2]) > 0 && Number(hostPort[2]) <= 65535) return null;
  return `'${text}' is not a DNS server address (IP or IP:PORT, [IPv6]:PORT)`;
}

/**
 * `redis://[[user]:password@]host[:port][/db]` or `rediss://` (TLS). Messages never repeat the
 * URL: it may carry a password.
 */
export function redisUrlError(text: string): string | null {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return 'not a URL (redis://HOST:PORT/DB or rediss://HOST:PORT/DB)';
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') return `the scheme must be redis: or rediss: (TLS), not ${url.protocol.slice(0, 16)}`;
  if (url.hostname === '') return 'no host';
  if (url.search !== '' || url.hash !== '') return 'no query or fragment is accepted';
  if (url.pathname !== '' && url.pathname !== '/' && !/^\/(?:[0-9]|1[0-5])$/.test(url.pathname)) return 'the path must be a database number from 0 to 15 (/0)';
  return null;
}

/** The URL with any password replaced by `***`: what logs and errors may show. */
export function redactRedisUrl(text: string): string {
  try {
    const url = new URL(text);
    if (url.password !== '') url.password = '***';
    return url.toString();
  } catch {
    return '(invalid URL)';
  }
}

export async function loadProxyConfig(file: string): Promise<ConfigResult> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const message = `cannot read config file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
    return { config: null, diagnostics: [{ file, line: 1, col: 1, severity: 'error', message }] };
  }
  return parseProxyConfig(file, text);
}

type P = Pair<Node, Node | null>;

export function parseProxyConfig(file: string, text: string): ConfigResult {
  const src = new YamlSource(file, text);
  if (!src.ok) return { config: null, diagnostics: src.sorted() };
  const root = src.doc.contents as Node | null;
  const empty = root === null || (isScalar(root) && root.value === null);
  const top = empty ? new Map<string, P>() : src.mapping(root, 'config', ['listen', 'policy', 'admin', 'dns', 'baseline', 'attribution', 'auth', 'deny_status', 'limits', 'shutdown_grace_ms', 'state', 'log']);
  if (!top) return { config: null, diagnostics: src.sorted() };

  const section = (name: string, keys: readonly string[]) => {
    const pair = top.get(name);
    if (!pair) return new Map<string, P>();
    return src.mapping(pair.value, name, keys, pair) ?? new Map<string, P>();
  };
  const listenOf = (pair: P | undefined, name: string, fallback: ListenAddress, allowOff: boolean): ListenAddress | null => {
    if (!pair) return fallback;
    const v = src.string(pair, name);
    if (v === undefined) return fallback;
    if (allowOff && v === 'off') return null;
    const parsed = parseListen(v);
    if ('error' in parsed) {
      src.error(src.at(pair), `${name}: ${parsed.error}`);
      return fallback;
    }
    return parsed;
  };
  const int = (map: Map<string, P>, key: string, name: string, fallback: number, min: number, max: number) => {
    const pair = map.get(key);
    return (pair && src.integer(pair, name, min, max)) ?? fallback;
  };

  const listen = listenOf(top.get('listen'), 'listen', DEFAULTS.listen, false) as ListenAddress;
  const policyPair = top.get('policy');
  const policyName = (policyPair && src.string(policyPair, 'policy')) || 'policy.yaml';
  const policy = resolvePath(dirname(resolvePath(file)), policyName);

  const admin = section('admin', ['listen', 'tokens', 'allowed_hosts']);
  const adminListen = listenOf(admin.get('listen'), 'admin.listen', DEFAULTS.adminListen, true);
  const tokens: AdminToken[] = [];
  const tokensPair = admin.get('tokens');
  for (const item of (tokensPair && tokensPair.value !== null ? src.sequence(tokensPair, 'admin.tokens') : undefined) ?? []) {
    const t = src.mapping(item, 'admin token', ['name', 'sha256', 'role']);
    if (!t) continue;
    const name = t.get('name') ? src.string(t.get('name') as P, 'name') : undefined;
    const sha = t.get('sha256') ? src.string(t.get('sha256') as P, 'sha256') : undefined;
    const role = t.get('role') ? src.oneOf(t.get('role') as P, 'role', ['viewer', 'developer'] as const) : undefined;
    if (!t.get('name') || !t.get('sha256') || !t.get('role')) src.error(item, 'admin token needs name, sha256 and role');
    else if (sha !== undefined && !SHA256_HEX.test(sha)) src.error(src.at(t.get('sha256') as P), 'sha256 must be 64 lower-case hex digits');
    else if (name !== undefined && sha !== undefined && role !== undefined) tokens.push({ name, sha256: sha, role });
  }

  const adminListenPair = admin.get('listen');
  if (adminListen && tokens.length === 0 && !isLoopbackHost(adminListen.host)) {
    src.error(adminListenPair ? src.at(adminListenPair) : null, `admin.listen: ${adminListen.host} is not a loopback address, and no admin.tokens are configured (make one with \`mcp-egress-proxy token\`)`);
  }
  const allowedHosts: string[] = [];
  const allowedPair = admin.get('allowed_hosts');
  for (const h of (allowedPair && allowedPair.value !== null ? src.strings(allowedPair, 'admin.allowed_hosts') : undefined) ?? []) {
    const problem = allowedHostError(h.value);
    if (problem) src.error(h.node, `admin.allowed_hosts: ${problem}`);
    else allowedHosts.push((canonicalHost(h.value) as { host: string }).host);
  }

  const dns = section('dns', ['servers', 'timeout_ms', 'cache_max_ttl_seconds']);
  const servers: string[] = [];
  const serversPair = dns.get('servers');
  for (const s of (serversPair && serversPair.value !== null ? src.strings(serversPair, 'dns.servers') : undefined) ?? []) {
    const problem = dnsServerError(s.value);
    if (problem) src.error(s.node, problem);
    else servers.push(s.value);
  }

  const baseline = section('baseline', ['allow_cidrs']);
  const allowCidrs: Cidr[] = [];
  const cidrPair = baseline.get('allow_cidrs');
  for (const c of (cidrPair && cidrPair.value !== null ? src.strings(cidrPair, 'baseline.allow_cidrs') : undefined) ?? []) {
    const parsed = parseCidr(c.value.includes('/') ? c.value : `${c.value}/${c.value.includes(':') ? 128 : 32}`);
    if ('error' in parsed) src.error(c.node, parsed.error);
    else allowCidrs.push(parsed);
  }

  const attribution = section('attribution', ['tool_header', 'call_header', 'session_header', 'trust', 'registration_ttl_ms']);
  const header = (key: string, fallback: string) => {
    const pair = attribution.get(key);
    const v = pair ? src.string(pair, `attribution.${key}`) : fallback;
    if (v === undefined) return fallback;
    if (!HEADER_NAME.test(v)) {
      src.error(pair ? src.at(pair) : null, `attribution.${key}: '${v}' is not an HTTP header name`);
      return fallback;
    }
    return v.toLowerCase();
  };
  const trustPair = attribution.get('trust');
  const trust = (trustPair && src.oneOf(trustPair, 'attribution.trust', ['header', 'registered'] as const)) ?? 'header';

  const auth = section('auth', ['users']);
  const users: ProxyUser[] = [];
  const usersPair = auth.get('users');
  for (const item of (usersPair && usersPair.value !== null ? src.sequence(usersPair, 'auth.users') : undefined) ?? []) {
    const u = src.mapping(item, 'auth user', ['name', 'password_sha256']);
    if (!u) continue;
    const name = u.get('name') ? src.string(u.get('name') as P, 'name') : undefined;
    const hash = u.get('password_sha256') ? src.string(u.get('password_sha256') as P, 'password_sha256') : undefined;
    if (!u.get('name') || !u.get('password_sha256')) src.error(item, 'auth user needs name and password_sha256');
    else if (name !== undefined && (name === '' || name.includes(':'))) src.error(src.at(u.get('name') as P), "user name must be non-empty and have no ':'");
    else if (hash !== undefined && !SHA256_HEX.test(hash)) src.error(src.at(u.get('password_sha256') as P), 'password_sha256 must be 64 lower-case hex digits');
    else if (name !== undefined && hash !== undefined) users.push({ name, passwordSha256: hash });
  }

  // Registered attribution is only as good as who may register: without tokens the guarded
  // server registers its own calls; without users it writes another client's name.
  if (trust === 'registered') {
    const at = trustPair ? src.at(trustPair) : null;
    if (tokens.length === 0) src.error(at, 'attribution.trust: registered needs admin.tokens (a developer token for the gateway); none are configured');
    if (users.length === 0) src.error(at, 'attribution.trust: registered needs auth.users (client identities the server cannot choose); none are configured');
  }

  const limits = section('limits', ['max_header_bytes', 'header_timeout_ms', 'connect_timeout_ms', 'tunnel_idle_timeout_ms', 'max_tunnels_per_client', 'max_connections', 'max_registered_calls', 'max_history_calls']);
  const stateSection = section('state', ['store', 'redis_url', 'key_prefix', 'timeout_ms']);
  const storePair = stateSection.get('store');
  const store = (storePair && src.oneOf(storePair, 'state.store', ['memory', 'redis'] as const)) ?? 'memory';
  const urlPair = stateSection.get('redis_url');
  let redisUrl: string = DEFAULTS.redisUrl;
  if (urlPair) {
    const v = src.string(urlPair, 'state.redis_url');
    const problem = v === undefined ? null : redisUrlError(v);
    if (problem) src.error(src.at(urlPair), `state.redis_url: ${problem}`);
    else if (v !== undefined) redisUrl = v;
    if (store === 'memory') src.warning(src.at(urlPair), 'state.redis_url is ignored: state.store is memory');
  }
  const prefixPair = stateSection.get('key_prefix');
  let keyPrefix: string = DEFAULTS.keyPrefix;
  if (prefixPair) {
    const v = src.string(prefixPair, 'state.key_prefix');
    if (v !== undefined && !/^[\x21-\x7e]{1,64}$/.test(v)) src.error(src.at(prefixPair), 'state.key_prefix: 1 to 64 visible ASCII characters (no spaces)');
    else if (v !== undefined) keyPrefix = v;
  }

  const logSection = section('log', ['level']);
  const levelPair = logSection.get('level');
  const level = (levelPair && src.oneOf(levelPair, 'log.level', ['trace', 'debug', 'info', 'warn', 'error'] as const)) ?? 'info';

  const config: ProxyConfig = {
    file,
    listen,
    policy,
    admin: { listen: adminListen, tokens, allowedHosts },
    dns: {
      servers,
      timeoutMs: int(dns, 'timeout_ms', 'dns.timeout_ms', DEFAULTS.dnsTimeoutMs, 1, 60_000),
      cacheMaxTtlSeconds: int(dns, 'cache_max_ttl_seconds', 'dns.cache_max_ttl_seconds', DEFAULTS.dnsCacheMaxTtlSeconds, 0, 86_400),
    },
    baseline: { allowCidrs },
    attribution: {
      toolHeader: header('tool_header', DEFAULTS.toolHeader),
      callHeader: header('call_header', DEFAULTS.callHeader),
      sessionHeader: header('session_header', DEFAULTS.sessionHeader),
      trust,
      defaultTtlMs: int(attribution, 'registration_ttl_ms', 'attribution.registration_ttl_ms', DEFAULTS.registrationTtlMs, 1, 86_400_000),
    },
    auth: { users },
    denyStatus: int(top, 'deny_status', 'deny_status', DEFAULTS.denyStatus, 400, 599),
    limits: {
      maxHeaderBytes: int(limits, 'max_header_bytes', 'limits.max_header_bytes', DEFAULTS.maxHeaderBytes, 1024, 1024 * 1024),
      headerTimeoutMs: int(limits, 'header_timeout_ms', 'limits.header_timeout_ms', DEFAULTS.headerTimeoutMs, 100, 600_000),
      connectTimeoutMs: int(limits, 'connect_timeout_ms', 'limits.connect_timeout_ms', DEFAULTS.connectTimeoutMs, 100, 600_000),
      tunnelIdleTimeoutMs: int(limits, 'tunnel_idle_timeout_ms', 'limits.tunnel_idle_timeout_ms', DEFAULTS.tunnelIdleTimeoutMs, 100, 86_400_000),
      maxTunnelsPerClient: int(limits, 'max_tunnels_per_client', 'limits.max_tunnels_per_client', DEFAULTS.maxTunnelsPerClient, 1, 1_000_000),
      maxConnections: int(limits, 'max_connections', 'limits.max_connections', DEFAULTS.maxConnections, 1, 1_000_000),
      maxRegisteredCalls: int(limits, 'max_registered_calls', 'limits.max_registered_calls', DEFAULTS.maxRegisteredCalls, 1, 10_000_000),
      maxHistoryCalls: int(limits, 'max_history_calls', 'limits.max_history_calls', DEFAULTS.maxHistoryCalls, 1_024, 100_000_000),
    },
    shutdownGraceMs: int(top, 'shutdown_grace_ms', 'shutdown_grace_ms', DEFAULTS.shutdownGraceMs, 0, 600_000),
    state: { store, redisUrl, keyPrefix, timeoutMs: int(stateSection, 'timeout_ms', 'state.timeout_ms', DEFAULTS.stateTimeoutMs, 1, 60_000) },
    log: { level },
  };
  if (!src.ok) return { config: null, diagnostics: src.sorted() };
  return { config, diagnostics: src.sorted() };
}

/** Built-in defaults, for `test` without `--config`. */
export function defaultConfig(): ProxyConfig {
  const result = parseProxyConfig('<defaults>', '');
  /* c8 ignore next */
  if (!result.config) throw new Error('defaults do not validate');
  return result.config;
}
