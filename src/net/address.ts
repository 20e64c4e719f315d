/**
 * Host and address canonicalisation: one reading of a host string, shared by the policy
 * loader (entries), the proxy (CONNECT targets, absolute URLs, Host headers) and the CLI.
 *
 * Threat: a destination can be spelled many ways that mean the same address
 * (`2852039166`, `0xA9FEA9FE`, `169.254.43518`, `::ffff:169.254.169.254`, `１２７.０.０.１`),
 * and a name can hide bytes that truncate or split it (`a/b`, `evil.com\0.ok.com`, `%` zone ids).
 * If the policy read a host one way and the resolver another, a rule could be bypassed. So every
 * host goes through `canonicalHost` exactly once and everything downstream uses its result:
 * lower-case punycode names without a trailing dot, dotted-quad IPv4, compressed IPv6, and
 * IPv4-mapped IPv6 turned into the IPv4 address it carries.
 *
 * Scope: pure functions, no I/O. Classifying addresses (SSRF baseline) lives in baseline.ts.
 *
 * Over 300 lines: every spelling of a host (IPv4 shorthand, hex and octal, IPv6 with embedded
 * IPv4, zones, trailing dots, IDNA) must be canonicalised in one place, or the checks disagree.
 */
import ipaddr from 'ipaddr.js';
import { domainToASCII } from 'node:url';

export interface Ipv4Address {
  readonly family: 4;
  /** Canonical text: dotted quad. */
  readonly text: string;
  /** The address as an unsigned 32-bit integer. */
  readonly v4: number;
}

export interface Ipv6Address {
  readonly family: 6;
  /** Canonical text: ipaddr.js's compressed lower-case form. */
  readonly text: string;
  /** 32 lower-case hex digits, the full 128 bits. */
  readonly hex: string;
}

export type IpAddress = Ipv4Address | Ipv6Address;

export type CanonicalHost =
  { readonly kind: 'ip'; readonly host: string; readonly ip: IpAddress } | { readonly kind: 'name'; readonly host: string };

export type HostResult = CanonicalHost | { readonly kind: 'error'; readonly error: string };

/** Longest host string we look at; DNS names are at most 253 characters, IPv6 text 45. */
const MAX_RAW_HOST = 1024;
const MAX_NAME = 253;
const LABEL = /^[a-z0-9_-]{1,63}$/;
const ASCII_NAME_CHARS = /^[A-Za-z0-9._-]*$/;
const OCTET = '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])';
/** The canonical IPv4 spelling (no leading zeros), read here on every call without ipaddr.js. */
const DOTTED_QUAD = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);
/** WHATWG "ends in a number": such a host is an IPv4 address or nothing. */
const NUMERIC_LABEL = /^(?:[0-9]+|0[xX][0-9a-fA-F]*)$/;

export function ipv4FromInt(value: number): Ipv4Address {
  const v4 = value >>> 0;
  const text = `${v4 >>> 24}.${(v4 >>> 16) & 255}.${(v4 >>> 8) & 255}.${v4 & 255}`;
  return { family: 4, text, v4 };
}

function fromIpaddrV4(addr: ipaddr.IPv4): Ipv4Address {
  const [a, b, c, d] = addr.octets as [number, number, number, number];
  return ipv4FromInt(((a << 24) | (b << 16) | (c << 8) | d) >>> 0);
}

function fromIpaddrV6(addr: ipaddr.IPv6): IpAddress {
  // IPv4-mapped addresses reach the IPv4 host they carry (a dial to ::ffff:127.0.0.1 lands on
  // an IPv4 listener), so they are that IPv4 address for every purpose.
  if (addr.isIPv4MappedAddress()) return fromIpaddrV4(addr.toIPv4Address());
  const hex = addr.parts.map((p) => p.toString(16).padStart(4, '0')).join('');
  return { family: 6, text: addr.toString(), hex };
}

/** An IPv6 address from its 32 hex digits (used to build addresses in tests and benchmarks). */
export function ipv6FromHex(hex: string): IpAddress {
  const parts: number[] = [];
  for (let i = 0; i < 32; i += 4) parts.push(parseInt(hex.slice(i, i + 4), 16));
  return fromIpaddrV6(new ipaddr.IPv6(parts));
}

const COMPATIBLE_PREFIX = '000000000000000000000000'; // ::/96
const NAT64_PREFIX = '0064ff9b0000000000000000'; // 64:ff9b::/96
const SIX_TO_FOUR_PREFIX = '2002'; // 2002::/16

/**
 * The IPv4 address an IPv6 address carries as IPv4-compatible (`::a.b.c.d`), NAT64
 * (`64:ff9b::/96`) or 6to4 (`2002:AABB:CCDD::/48`), or null. One reading for the SSRF baseline
 * and the policy: both judge such an address by the IPv4 it carries, because on a network with
 * NAT64 or a 6to4 relay a dial to it reaches that IPv4 host. (IPv4-mapped addresses never get
 * here: `canonicalHost` already turned them into IPv4.)
 */
export function embeddedIpv4(ip: IpAddress): Ipv4Address | null {
  if (ip.family === 4) return null;
  const { hex } = ip;
  if (hex.startsWith(COMPATIBLE_PREFIX)) {
    const tail = hex.slice(24);
    // `::` and `::1` are themselves (unspecified, loopback), not 0.0.0.0 and 0.0.0.1.
    if (tail === '00000000' || tail === '00000001') return null;
    return ipv4FromInt(parseInt(tail, 16));
  }
  if (hex.startsWith(NAT64_PREFIX)) return ipv4FromInt(parseInt(hex.slice(24), 16));
  if (hex.startsWith(SIX_TO_FOUR_PREFIX)) return ipv4FromInt(parseInt(hex.slice(4, 12), 16));
  return null;
}

/**
 * IPv6 text with a trailing dotted quad, as hex groups. ipaddr.js reads `::10.1.2.3` (an
 * IPv4-compatible address, ::a01:203) as the mapped `::ffff:10.1.2.3`, which would change the
 * address we dial; spelled in hex it parses as what it is.
 */
function dottedTailToHex(text: string): string {
  const m = /^(.*:)([0-9]{1,3}(?:\.[0-9]{1,3}){3})$/.exec(text);
  if (!m || !ipaddr.IPv4.isValidFourPartDecimal(m[2] as string)) return text;
  const [a, b, c, d] = (m[2] as string).split('.').map(Number) as [number, number, number, number];
  return `${m[1]}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
}

function parseIpv6(text: string): ipaddr.IPv6 | null {
  const hexText = dottedTailToHex(text);
  return ipaddr.IPv6.isValid(hexText) ? ipaddr.IPv6.parse(hexText) : null;
}

/**
 * A strict IP literal as a resolver returns it or a CIDR is written: canonical dotted-quad IPv4
 * or IPv6 text without brackets or zone. Returns null for anything else.
 */
export function parseIpLiteral(text: string): IpAddress | null {
  if (text.includes('%')) return null;
  if (text.includes(':')) {
    const parsed = parseIpv6(text);
    return parsed ? fromIpaddrV6(parsed) : null;
  }
  const quad = DOTTED_QUAD.exec(text);
  if (!quad) return null;
  return ipv4FromInt(((Number(quad[1]) << 24) | (Number(quad[2]) << 16) | (Number(quad[3]) << 8) | Number(quad[4])) >>> 0);
}

function hasControlOrSpace(raw: string): boolean {
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c <= 0x20 || c === 0x7f) return true;
  }
  return false;
}

/**
 * Reads a host the way a client's resolver would, then canonicalises it. Accepts bracketed or
 * bare IPv6, every inet_aton spelling of IPv4, and DNS names (IDN included). Refuses control
 * characters, `%` (zone ids, percent-encoding), empty labels, over-long names, and anything
 * that is neither a DNS name nor an IP literal.
 */
export function canonicalHost(raw: string): HostResult {
  if (raw.length === 0) return { kind: 'error', error: 'empty host' };
  if (raw.length > MAX_RAW_HOST) return { kind: 'error', error: 'host too long' };
  if (hasControlOrSpace(raw)) return { kind: 'error', error: 'host contains control characters or spaces' };
  if (raw.includes('%')) return { kind: 'error', error: "host contains '%' (zone ids and percent-encoding are not accepted)" };

  if (raw.startsWith('[')) {
    if (!raw.endsWith(']')) return { kind: 'error', error: 'unterminated IPv6 literal' };
    const inner = raw.slice(1, -1);
    const ip = inner.includes(':') ? parseIpLiteral(inner) : null;
    if (!ip) return { kind: 'error', error: 'invalid IPv6 literal' };
    return { kind: 'ip', host: ip.text, ip };
  }
  if (raw.includes(':')) {
    const ip = parseIpLiteral(raw);
    if (!ip) return { kind: 'error', error: 'invalid host' };
    return { kind: 'ip', host: ip.text, ip };
  }

  // One trailing dot is the DNS root and changes nothing; two are an empty label.
  const trimmed = raw.endsWith('.') ? raw.slice(0, -1) : raw;
  if (trimmed.length === 0) return { kind: 'error', error: 'empty host' };
  // The canonical dotted quad first (most IP literals), then every inet_aton spelling.
  const quad = parseIpLiteral(trimmed);
  if (quad) return { kind: 'ip', host: quad.text, ip: quad };
  if (ipaddr.IPv4.isValid(trimmed)) {
    const ip = fromIpaddrV4(ipaddr.IPv4.parse(trimmed));
    return { kind: 'ip', host: ip.text, ip };
  }

  // domainToASCII parses as a URL host: it silently truncates at '/', '?', '#', so anything
  // outside the name alphabet is refused before it gets there, after compatibility
  // normalisation so that a full-width '／' is seen as the '/' it maps to.
  const normalised = trimmed.normalize('NFKC');
  for (const ch of normalised) {
    if (ch.charCodeAt(0) < 0x80 && !ASCII_NAME_CHARS.test(ch)) {
      return { kind: 'error', error: `host contains '${ch}'` };
    }
  }
  let ascii = domainToASCII(trimmed);
  if (ascii === '') return { kind: 'error', error: 'invalid host name' };
  if (ascii.endsWith('.')) ascii = ascii.slice(0, -1);
  // The URL host parser reads all-numeric hosts (also full-width digits) as IPv4.
  if (ipaddr.IPv4.isValidFourPartDecimal(ascii)) {
    const ip = fromIpaddrV4(ipaddr.IPv4.parse(ascii));
    return { kind: 'ip', host: ip.text, ip };
  }
  if (ascii.length > MAX_NAME) return { kind: 'error', error: 'host name longer than 253 characters' };
  const labels = ascii.split('.');
  for (const label of labels) {
    if (!LABEL.test(label)) return { kind: 'error', error: 'invalid host name label' };
  }
  if (NUMERIC_LABEL.test(labels[labels.length - 1] as string)) {
    return { kind: 'error', error: 'host ends in a number but is not an IPv4 address' };
  }
  return { kind: 'name', host: ascii };
}

/** The canonical form a host takes in an `IP` context (for messages and logs). */
/** The one loopback check: 127.0.0.0/8 and ::1 (the baseline's `loopback` class covers the same ranges). */
export function isLoopbackIp(ip: IpAddress): boolean {
  return ip.family === 4 ? ip.v4 >>> 24 === 127 : ip.text === '::1';
}

/** A host as written (a listen address) that is a loopback IP literal; `localhost` is a name, not one. */
export function isLoopbackHost(host: string): boolean {
  const h = canonicalHost(host);
  return h.kind === 'ip' && isLoopbackIp(h.ip);
}

export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

// ---- prefix keys, used by CIDR matching (policy index, baseline) ----

/**
 * The IPv4 network key of `v4` for a prefix of `len` bits. Kept in signed 32-bit range so that
 * V8 stores it as a small integer: Map lookups on heap numbers cost several times more.
 */
export function v4Key(v4: number, len: number): number {
  return len === 0 ? 0 : (v4 >>> (32 - len)) | 0;
}

/**
 * The IPv6 network key of `hex` for a prefix of `len` bits: the leading bits as hex text (keys
 * are only compared between prefixes of the same length).
 */
export function v6Key(hex: string, len: number): string {
  const whole = len >>> 2;
  const rest = len & 3;
  if (rest === 0) return hex.slice(0, whole);
  return hex.slice(0, whole) + (parseInt(hex.charAt(whole), 16) & (0xf & ~((1 << (4 - rest)) - 1))).toString(16);
}

/** `hex` with every bit after the first `len` cleared. */
function v6Network(hex: string, len: number): string {
  return v6Key(hex, len).padEnd(32, '0');
}

export interface Cidr {
  readonly family: 4 | 6;
  readonly prefix: number;
  /** v4Key / v6Key of the network address at `prefix`. */
  readonly key: number | string;
  /** Canonical text `network/prefix`. */
  readonly text: string;
}

export type CidrResult = Cidr | { readonly error: string };

/**
 * Parses `ADDRESS/PREFIX` strictly: canonical address text, decimal prefix in range, and no bits
 * set beyond the prefix. An IPv4-mapped block (`::ffff:10.0.0.0/104`) becomes the IPv4 block it
 * carries, so it matches the IPv4 destinations it names and nothing else.
 */
export function parseCidr(text: string): CidrResult {
  const slash = text.indexOf('/');
  const addrText = text.slice(0, slash);
  const prefixText = text.slice(slash + 1);
  if (!/^(0|[1-9][0-9]{0,2})$/.test(prefixText)) return { error: `invalid prefix length in '${text}'` };
  let prefix = Number(prefixText);
  let ip: IpAddress | null;
  let mappedBlock: boolean;
  if (addrText.includes(':')) {
    const parsed = addrText.includes('%') ? null : parseIpv6(addrText);
    if (!parsed) return { error: `invalid IPv6 address in '${text}'` };
    if (prefix > 128) return { error: `prefix length above 128 in '${text}'` };
    mappedBlock = parsed.isIPv4MappedAddress() && prefix >= 96;
    if (mappedBlock) {
      ip = fromIpaddrV4(parsed.toIPv4Address());
      prefix -= 96;
    } else {
      const hex = parsed.parts.map((p) => p.toString(16).padStart(4, '0')).join('');
      ip = { family: 6, text: parsed.toString(), hex };
    }
  } else {
    if (!ipaddr.IPv4.isValidFourPartDecimal(addrText)) return { error: `invalid IPv4 address in '${text}'` };
    if (prefix > 32) return { error: `prefix length above 32 in '${text}'` };
    ip = fromIpaddrV4(ipaddr.IPv4.parse(addrText));
  }
  if (ip.family === 4) {
    const key = v4Key(ip.v4, prefix);
    const network = prefix === 0 ? 0 : (prefix === 32 ? key : key << (32 - prefix)) >>> 0;
    if (network !== ip.v4) return { error: `'${text}' has bits set beyond its /${prefixText} prefix` };
    return { family: 4, prefix, key, text: `${ip.text}/${prefix}` };
  }
  const key = v6Key(ip.hex, prefix);
  if (v6Network(ip.hex, prefix) !== ip.hex) return { error: `'${text}' has bits set beyond its /${prefixText} prefix` };
  return { family: 6, prefix, key, text: `${ip.text}/${prefix}` };
}

/** The network address of `cidr` (its first address). */
export function cidrNetwork(cidr: Cidr): IpAddress {
  if (cidr.family === 4) return ipv4FromInt(cidr.prefix === 0 ? 0 : (cidr.key as number) << (32 - cidr.prefix));
  const hex = (cidr.key as string).padEnd(32, '0');
  const parts: number[] = [];
  for (let i = 0; i < 32; i += 4) parts.push(parseInt(hex.slice(i, i + 4), 16));
  // Built directly, not through fromIpaddrV6, which would turn an IPv4-mapped text into IPv4.
  return { family: 6, text: new ipaddr.IPv6(parts).toString(), hex };
}

/** Whether two blocks share an address (one holds the other's network address). */
export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  if (a.family !== b.family) return false;
  const [wide, narrow] = a.prefix <= b.prefix ? [a, b] : [b, a];
  return cidrContains(wide, cidrNetwork(narrow));
}

export interface CarriedBlock {
  /** How the IPv6 block spells IPv4 addresses. */
  readonly form: 'IPv4-compatible' | 'NAT64' | '6to4';
  /** The IPv4 addresses the block carries, as `network/prefix`. */
  readonly ipv4: string;
}

/**
 * The IPv4 block that an IPv6 block spells, when the whole block lies inside one of the forms
 * embeddedIpv4 reads (`::/96`, `64:ff9b::/96`, `2002::/16`), else null.
 */
export function carriedBlock(cidr: Cidr): CarriedBlock | null {
  if (cidr.family !== 6) return null;
  const hex = (cidr.key as string).padEnd(32, '0');
  const block = (v4hex: string, bits: number, form: CarriedBlock['form']): CarriedBlock => {
    const len = Math.min(bits, 32);
    const v4 = parseInt(v4hex, 16);
    const network = len === 0 ? 0 : (v4Key(v4, len) << (32 - len)) >>> 0;
    return { form, ipv4: `${ipv4FromInt(network).text}/${len}` };
  };
  if (cidr.prefix >= 96 && hex.startsWith(NAT64_PREFIX)) return block(hex.slice(24), cidr.prefix - 96, 'NAT64');
  // `::/127` and inside it (`::`, `::1`) carry nothing.
  if (cidr.prefix >= 96 && hex.startsWith(COMPATIBLE_PREFIX) && !(cidr.prefix >= 127 && parseInt(hex.slice(24), 16) < 2)) {
    return block(hex.slice(24), cidr.prefix - 96, 'IPv4-compatible');
  }
  if (cidr.prefix >= 16 && hex.startsWith(SIX_TO_FOUR_PREFIX)) return block(hex.slice(4, 12), cidr.prefix - 16, '6to4');
  return null;
}

/** Whether `ip` falls inside `cidr`. */
export function cidrContains(cidr: Cidr, ip: IpAddress): boolean {
  if (cidr.family !== ip.family) return false;
  return ip.family === 4 ? v4Key(ip.v4, cidr.prefix) === cidr.key : v6Key(ip.hex, cidr.prefix) === cidr.key;
}
