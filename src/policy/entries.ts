/**
 * Destination list entries (policy.md "Destination entries"): a host name, a `*.` wildcard
 * host, an IP literal or a CIDR. Entries are read with the same canonicalisation as
 * destinations (net/address.ts), so `2852039166` written in a list means 169.254.169.254 and
 * `::ffff:10.0.0.0/104` means 10.0.0.0/8: a rule cannot be bypassed by re-spelling.
 */
import { canonicalHost, carriedBlock, parseCidr } from '../net/address.js';
import type { Entry } from './types.js';

export type EntryResult = Entry | { readonly error: string };

export function parseEntry(text: string): EntryResult {
  if (text.includes('/')) {
    const cidr = parseCidr(text);
    if ('error' in cidr) return { error: cidr.error };
    return { kind: 'cidr', text, cidr };
  }
  if (text.startsWith('*.')) {
    const rest = text.slice(2);
    if (rest.includes('*')) return { error: `'${text}': '*' is allowed only as the first label` };
    const base = canonicalHost(rest);
    if (base.kind === 'error') return { error: `'${text}' is not a wildcard host: ${base.error}` };
    if (base.kind === 'ip') return { error: `'${text}': a wildcard must be followed by a host name, not an address` };
    if (!base.host.includes('.')) return { error: `'${text}': the part after '*.' needs at least two labels` };
    return { kind: 'wildcard', text, suffix: base.host };
  }
  if (text.includes('*')) return { error: `'${text}': '*' is allowed only as a leading '*.' label` };
  const host = canonicalHost(text);
  if (host.kind === 'error') {
    return { error: `'${text}' is neither a host name, an IP literal nor a CIDR (${host.error})` };
  }
  if (host.kind === 'ip') {
    const cidr = parseCidr(`${host.ip.text}/${host.ip.family === 4 ? 32 : 128}`);
    /* c8 ignore next */
    if ('error' in cidr) return { error: cidr.error };
    return { kind: 'cidr', text, cidr };
  }
  return { kind: 'host', text, host: host.host };
}

/**
 * A load-time warning for an entry that spells IPv4 addresses in IPv6 (NAT64, 6to4,
 * IPv4-compatible): it matches the IPv6 form only (IPv6 entries match IPv6 addresses), so the
 * same host reached by its IPv4 address or another spelling is not on it. The IPv4 block covers
 * every spelling, so that is what to write.
 */
export function entryWarning(entry: Entry): string | null {
  if (entry.kind !== 'cidr') return null;
  const carried = carriedBlock(entry.cidr);
  if (carried === null) return null;
  return `entry '${entry.text}' is the ${carried.form} spelling of ${carried.ipv4} and matches only addresses written that way; write ${carried.ipv4} to match it in every spelling (IPv4, NAT64, 6to4, IPv4-compatible)`;
}
