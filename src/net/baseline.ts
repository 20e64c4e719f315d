/**
 * The SSRF baseline (interface.md "SSRF baseline"): address classes refused before any rule,
 * whatever the policy says, and not softened by shadow mode.
 *
 * Threat: an agent steered to cloud metadata (169.254.169.254, fd00:ec2::254), to the host's
 * own services, or into a private network, directly or through a name or an IPv6 form that
 * carries an internal IPv4 address. Every candidate address is judged here, after resolution and
 * before the dial, so the judged address is the dialled address (pinned dial, pinned-dial.ts).
 *
 * Scope: classification of one address. IPv6 forms that carry IPv4 (mapped, compatible, NAT64,
 * 6to4) are judged by the IPv4 they carry; `::` and `::1` as themselves. The operator's
 * `baseline.allow_cidrs` exempt what they name (judged on the same address); nothing else does,
 * a `metadata` address is exempted only by an entry that is exactly it, and nothing exempts
 * `self`, the proxy's own listening addresses (a request loop).
 */
import { carriedBlock, cidrContains, cidrNetwork, cidrsOverlap, embeddedIpv4, parseCidr } from './address.js';
import type { Cidr, IpAddress, Ipv4Address } from './address.js';

export type AddressClass =
  | 'metadata'
  | 'loopback'
  | 'unspecified'
  | 'private'
  | 'shared'
  | 'link_local'
  | 'unique_local'
  | 'multicast'
  | 'broadcast'
  | 'reserved'
  | 'self';

function cidrs(...texts: string[]): Cidr[] {
  return texts.map((t) => {
    const c = parseCidr(t.includes('/') ? t : `${t}/${t.includes(':') ? 128 : 32}`);
    /* c8 ignore next */
    if ('error' in c) throw new Error(c.error);
    return c;
  });
}

/** The table, in order: the first row that matches names the class. */
const TABLE: ReadonlyArray<readonly [AddressClass, readonly Cidr[]]> = [
  ['metadata', cidrs('169.254.169.254', '169.254.170.2', '100.100.100.200', '168.63.129.16', '192.0.0.192', 'fd00:ec2::254')],
  ['loopback', cidrs('127.0.0.0/8', '::1')],
  ['unspecified', cidrs('0.0.0.0/8', '::')],
  ['private', cidrs('10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16')],
  ['shared', cidrs('100.64.0.0/10')],
  ['link_local', cidrs('169.254.0.0/16', 'fe80::/10')],
  ['unique_local', cidrs('fc00::/7')],
  ['multicast', cidrs('224.0.0.0/4', 'ff00::/8')],
  ['broadcast', cidrs('255.255.255.255')],
  [
    'reserved',
    cidrs(
      '192.0.0.0/24',
      '192.0.2.0/24',
      '198.18.0.0/15',
      '198.51.100.0/24',
      '203.0.113.0/24',
      '240.0.0.0/4',
      '2001:db8::/32',
      '100::/64',
      '2001::/32',
      '64:ff9b:1::/48',
    ),
  ],
];
const GLOBAL_UNICAST = cidrs('2000::/3')[0] as Cidr;

/**
 * The IPv4 rows by first octet, in table order: classification runs for every candidate of
 * every call, and most addresses need no more than one small lookup.
 */
const V4_BY_FIRST_OCTET: ReadonlyArray<ReadonlyArray<readonly [Exclude<AddressClass, 'self'>, Cidr]>> = (() => {
  const byOctet: Array<Array<readonly [Exclude<AddressClass, 'self'>, Cidr]>> = Array.from({ length: 256 }, () => []);
  for (const [addressClass, blocks] of TABLE) {
    for (const block of blocks) {
      if (block.family !== 4) continue;
      const first = block.prefix >= 8 ? ((block.key as number) >>> 0) >>> (block.prefix - 8) : (block.key as number) << (8 - block.prefix);
      const span = block.prefix >= 8 ? 1 : 1 << (8 - block.prefix);
      for (let o = first; o < first + span; o++) byOctet[o & 255]?.push([addressClass as Exclude<AddressClass, 'self'>, block]);
    }
  }
  return byOctet;
})();

/** The table's class for `ip` (embedded IPv4 unwrapped), ignoring exemptions and `self`. */
export function classifyAddress(ip: IpAddress): Exclude<AddressClass, 'self'> | null {
  const judged = embeddedIpv4(ip) ?? ip;
  if (judged.family === 4) {
    for (const [addressClass, block] of V4_BY_FIRST_OCTET[judged.v4 >>> 24] ?? []) if (cidrContains(block, judged)) return addressClass;
    return null;
  }
  for (const [addressClass, blocks] of TABLE) {
    for (const block of blocks) if (cidrContains(block, judged)) return addressClass as Exclude<AddressClass, 'self'>;
  }
  if (!cidrContains(GLOBAL_UNICAST, judged)) return 'reserved';
  return null;
}

export interface BaselineOptions {
  /** Operator exemptions (`baseline.allow_cidrs`). */
  readonly allowCidrs?: readonly Cidr[];
  /** Whether `ip:port` is one of the proxy's own listening sockets. */
  readonly isSelf?: (ip: IpAddress, port: number) => boolean;
}

/** An entry that names one address: `/32`, `/128`, or the bare address (read as such). */
function isSingleAddress(block: Cidr): boolean {
  return block.prefix === (block.family === 4 ? 32 : 128);
}

/**
 * Whether `block` exempts `ip`, which carries `carried` (or null). An address that carries an
 * IPv4 address is judged by it, so it is exempt when the block holds that IPv4 address, or when
 * the block is itself an IPv6 spelling of IPv4 addresses (`64:ff9b::/96`, `2002:a01:203::/48`)
 * that holds it; a broad IPv6 block that merely contains such spellings (`::/0`, `2000::/3`)
 * does not exempt the private or loopback IPv4 addresses they carry.
 */
function exempts(block: Cidr, spellsIpv4: boolean, ip: IpAddress, carried: IpAddress | null): boolean {
  if (carried === null) return cidrContains(block, ip);
  return cidrContains(block, carried) || (spellsIpv4 && cidrContains(block, ip));
}

/**
 * The baseline as the policy engine's `classify` hook (exemptions as in `exempts`). The
 * `metadata` row is exempted only by an entry that is exactly that address: a range written for
 * something else nearby (169.254.0.0/16 for a node-local DNS cache, fd00::/8 for a ULA network,
 * 64:ff9b::/96 for NAT64) must not hand out the cloud's credentials as a side effect.
 */
export function createBaseline(options: BaselineOptions = {}): (ip: IpAddress, port: number) => AddressClass | null {
  const allow = (options.allowCidrs ?? []).map((block) => ({ block, spellsIpv4: carriedBlock(block) !== null }));
  const exactAllow = allow.filter((a) => isSingleAddress(a.block));
  const isSelf = options.isSelf;
  return (ip, port) => {
    if (isSelf?.(ip, port)) return 'self';
    const addressClass = classifyAddress(ip);
    if (addressClass === null) return null;
    const carried = embeddedIpv4(ip);
    for (const { block, spellsIpv4 } of addressClass === 'metadata' ? exactAllow : allow)
      if (exempts(block, spellsIpv4, ip, carried)) return null;
    return addressClass;
  };
}

/** A broad `allow_cidrs` entry and the metadata addresses it covers but does not exempt. */
export interface MetadataOverlap {
  readonly entry: string;
  readonly metadata: readonly string[];
}

/** The IPv6 spellings of an IPv4 address that embeddedIpv4 reads: compatible, NAT64, 6to4 (its /48). */
function carrierForms(v4: Ipv4Address): Cidr[] {
  const hex = v4.v4.toString(16).padStart(8, '0');
  const groups = `${hex.slice(0, 4)}:${hex.slice(4)}`;
  return cidrs(`::${groups}/128`, `64:ff9b::${groups}/128`, `2002:${groups}::/48`);
}

/**
 * The `allow_cidrs` entries that cover a metadata address (in any spelling the baseline reads)
 * without being exactly it: such an entry leaves metadata refused, and the proxy says so at start
 * so that an operator who meant to exempt it learns why it is still refused.
 */
export function metadataOverlaps(allowCidrs: readonly Cidr[]): MetadataOverlap[] {
  const metadata = (TABLE.find(([c]) => c === 'metadata') as (typeof TABLE)[number])[1];
  const out: MetadataOverlap[] = [];
  for (const block of allowCidrs) {
    if (isSingleAddress(block)) continue;
    const covered = metadata.filter((m) => {
      const forms = m.family === 4 ? [m, ...carrierForms(cidrNetwork(m) as Ipv4Address)] : [m];
      return forms.some((f) => cidrsOverlap(block, f));
    });
    if (covered.length > 0) out.push({ entry: block.text, metadata: covered.map((m) => cidrNetwork(m).text) });
  }
  return out;
}
