/**
 * A set of destination entries (a rule's in-scope list, its exemptions, a clause's `hosts`),
 * indexed for membership: `(host, a)` is on a list when the host name matches a host or wildcard
 * entry, or `a` matches an IP or CIDR entry (policy.md step 3). An IPv6 address that carries an
 * IPv4 address (IPv4-compatible, NAT64, 6to4: embeddedIpv4) is on a set as itself or through the
 * IPv4 address it carries: on a network with NAT64, `64:ff9b::93.184.216.34` reaches 93.184.216.34.
 */
import { v4Key, v6Key } from '../net/address.js';
import type { IpAddress, Ipv4Address } from '../net/address.js';
import type { Entry } from './types.js';

export interface EntrySet {
  readonly entries: readonly Entry[];
  readonly hosts: ReadonlySet<string>;
  readonly suffixes: ReadonlySet<string>;
  readonly v4: ReadonlyMap<number, ReadonlySet<number>>;
  readonly v6: ReadonlyMap<number, ReadonlySet<string>>;
  readonly hasNames: boolean;
  readonly hasAddresses: boolean;
}

export function compileEntrySet(entries: readonly Entry[]): EntrySet {
  const hosts = new Set<string>();
  const suffixes = new Set<string>();
  const v4 = new Map<number, Set<number>>();
  const v6 = new Map<number, Set<string>>();
  for (const entry of entries) {
    if (entry.kind === 'host') hosts.add(entry.host);
    else if (entry.kind === 'wildcard') suffixes.add(entry.suffix);
    else if (entry.cidr.family === 4) getOrCreate(v4, entry.cidr.prefix, () => new Set()).add(entry.cidr.key as number);
    else getOrCreate(v6, entry.cidr.prefix, () => new Set()).add(entry.cidr.key as string);
  }
  return {
    entries,
    hosts,
    suffixes,
    v4,
    v6,
    hasNames: hosts.size + suffixes.size > 0,
    hasAddresses: v4.size + v6.size > 0,
  };
}

/** Whether `name` (a canonical host name, or null for an IP destination) is on the set by name. */
export function nameOnSet(set: EntrySet, name: string | null): boolean {
  if (name === null || !set.hasNames) return false;
  if (set.hosts.has(name)) return true;
  if (set.suffixes.size === 0) return false;
  for (let dot = name.indexOf('.'); dot !== -1; dot = name.indexOf('.', dot + 1)) {
    if (set.suffixes.has(name.slice(dot + 1))) return true;
  }
  return false;
}

/**
 * Whether `ip` is on the set by address. `carried` is the IPv4 address `ip` carries
 * (embeddedIpv4): such an IPv6 address is on the set as itself or through the IPv4 it carries.
 */
export function addressOnSet(set: EntrySet, ip: IpAddress, carried: Ipv4Address | null = null): boolean {
  if (ip.family === 4) return v4OnSet(set, ip.v4);
  for (const [len, keys] of set.v6) if (keys.has(v6Key(ip.hex, len))) return true;
  return carried !== null && v4OnSet(set, carried.v4);
}

function v4OnSet(set: EntrySet, v4: number): boolean {
  for (const [len, keys] of set.v4) if (keys.has(v4Key(v4, len))) return true;
  return false;
}

export function getOrCreate<K, V>(map: Map<K, V>, key: K, make: () => V): V {
  let value = map.get(key);
  if (value === undefined) {
    value = make();
    map.set(key, value);
  }
  return value;
}
