/**
 * Name resolution for the data path and the `test` command.
 *
 * Threat: whoever controls a name's DNS decides where it points, and may point it somewhere
 * new between our check and our dial (rebinding). So a name is resolved once per call here,
 * every answer is vetted by the caller, and the dial uses only vetted addresses (pinned-dial.ts).
 * `dns.lookup` is never used: it reads /etc/hosts, applies inet_aton to names, and runs on the
 * libuv thread pool; a `dns.promises.Resolver` asks exactly the servers configured.
 *
 * Cache: answers are kept for at most their smallest TTL, capped by a ceiling; a TTL-0 answer
 * is never stored, so it serves only the call that asked. Failures are not cached.
 */
import { Resolver as DnsResolver } from 'node:dns/promises';
import { parseIpLiteral } from './address.js';
import type { IpAddress } from './address.js';

export type DnsErrorKind = 'nxdomain' | 'no_data' | 'servfail' | 'timeout' | 'refused' | 'too_many_addresses' | 'error';

/**
 * The most distinct addresses a name may resolve to (A and AAAA together). Every candidate is
 * vetted and written into the call's decision line, so an unbounded answer is an unbounded line:
 * a name whose DNS its owner controls answered 2,000 A and 2,000 AAAA records, made 109 KB
 * decision lines and pushed the decisions before it out of the console's feed in 20 calls
 * (red team, this project). Real names resolve to a handful; more is refused, not truncated (the
 * policy judges every address a name resolves to, policy.md step 1).
 */
export const MAX_ADDRESSES = 32;

export class DnsError extends Error {
  constructor(
    readonly kind: DnsErrorKind,
    readonly host: string,
    detail: string,
  ) {
    super(`DNS ${kind} for ${host}: ${detail}`);
    this.name = 'DnsError';
  }
}

export interface Resolution {
  readonly addresses: readonly IpAddress[];
  readonly cached: boolean;
  /** Time spent asking the servers (0 when served from the cache). */
  readonly durationMs: number;
}

export interface NameResolver {
  resolve(name: string): Promise<Resolution>;
  /** The cached answer for `name`, if one is fresh: lets a decision skip the promise (null: ask `resolve`). */
  peek?(name: string): Resolution | null;
}

export interface ResolverOptions {
  /** `IP` or `IP:PORT` (`[v6]:PORT`) entries; empty: the system's resolv.conf servers. */
  readonly servers?: readonly string[];
  /** Per-query timeout. */
  readonly timeoutMs?: number;
  /** The longest time an answer is served from the cache, whatever its TTL. */
  readonly maxTtlSeconds?: number;
  readonly cacheSize?: number;
  /** For tests: the clock. */
  readonly now?: () => number;
}

interface TtlRecord {
  address: string;
  ttl: number;
}

function kindOf(code: string | undefined): DnsErrorKind {
  switch (code) {
    case 'ENOTFOUND':
      return 'nxdomain';
    case 'ENODATA':
      return 'no_data';
    case 'ESERVFAIL':
      return 'servfail';
    case 'ETIMEOUT':
      return 'timeout';
    case 'ECONNREFUSED':
    case 'EREFUSED':
      return 'refused';
    default:
      return 'error';
  }
}

export function createResolver(options: ResolverOptions = {}): NameResolver {
  const timeoutMs = options.timeoutMs ?? 5000;
  const resolver = new DnsResolver({ timeout: Math.max(1, Math.floor(timeoutMs / 2)), tries: 2 });
  if (options.servers && options.servers.length > 0) resolver.setServers([...options.servers]);
  const maxTtlMs = (options.maxTtlSeconds ?? 60) * 1000;
  const cacheSize = options.cacheSize ?? 10_000;
  const now = options.now ?? Date.now;
  const cache = new Map<string, { addresses: readonly IpAddress[]; expires: number }>();

  async function query(name: string, family: 4 | 6): Promise<TtlRecord[] | NodeJS.ErrnoException> {
    try {
      return family === 4 ? await resolver.resolve4(name, { ttl: true }) : await resolver.resolve6(name, { ttl: true });
    } catch (err) {
      return err as NodeJS.ErrnoException;
    }
  }

  const peek = (name: string): Resolution | null => {
    const hit = cache.get(name);
    if (!hit) return null;
    if (hit.expires > now()) return { addresses: hit.addresses, cached: true, durationMs: 0 };
    cache.delete(name);
    return null;
  };

  return {
    peek,
    async resolve(name: string): Promise<Resolution> {
      const hit = peek(name);
      if (hit) return hit;
      const started = performance.now();
      const [a, aaaa] = await Promise.all([query(name, 4), query(name, 6)]);
      const durationMs = performance.now() - started;
      const records: TtlRecord[] = [];
      for (const answer of [a, aaaa]) if (Array.isArray(answer)) records.push(...answer);
      const addresses: IpAddress[] = [];
      const seen = new Set<string>();
      for (const record of records) {
        const ip = parseIpLiteral(record.address);
        if (ip && !seen.has(ip.text)) {
          seen.add(ip.text);
          addresses.push(ip);
        }
      }
      if (addresses.length === 0) {
        // Prefer the more telling failure: a missing name over a missing record type.
        const errors = [a, aaaa].filter((x): x is NodeJS.ErrnoException => !Array.isArray(x));
        const kinds = errors.map((e) => kindOf(e.code));
        const kind = kinds.includes('nxdomain') ? 'nxdomain' : (kinds.find((k) => k !== 'no_data') ?? 'no_data');
        const detail = errors.find((e) => kindOf(e.code) === kind)?.code ?? 'no A or AAAA records';
        throw new DnsError(kind, name, detail);
      }
      if (addresses.length > MAX_ADDRESSES)
        throw new DnsError('too_many_addresses', name, `${addresses.length} addresses (at most ${MAX_ADDRESSES})`);
      const ttl = Math.min(...records.map((r) => r.ttl));
      if (ttl > 0 && maxTtlMs > 0) {
        if (cache.size >= cacheSize) cache.delete(cache.keys().next().value as string);
        cache.set(name, { addresses, expires: now() + Math.min(ttl * 1000, maxTtlMs) });
      }
      return { addresses, cached: false, durationMs };
    },
  };
}

/** A resolver that answers from a fixed table (the `test` command's `--resolve`). */
export function staticResolver(table: ReadonlyMap<string, readonly IpAddress[]>, fallback?: NameResolver): NameResolver {
  return {
    async resolve(name) {
      const addresses = table.get(name);
      if (addresses) return { addresses, cached: false, durationMs: 0 };
      if (fallback) return fallback.resolve(name);
      throw new DnsError('nxdomain', name, 'not in the --resolve table');
    },
  };
}
