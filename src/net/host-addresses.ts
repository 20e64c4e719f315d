/**
 * The addresses of this host (of the proxy's network namespace), for per-client limits.
 *
 * Threat: a client on the proxy's host may bind any address the host holds as its source, not
 * only loopback ones (red team 28: every address on an interface, a pod's IP, gave a fresh tunnel
 * allowance). Scope: telling whether a source address is one of ours; the caller counts every
 * such source as one client. The list is read again (getifaddrs) when it is older than
 * `REFRESH_MS` at the time of asking, so an address added since counts as ours within that long.
 */
import { networkInterfaces } from 'node:os';

export const REFRESH_MS = 5_000;

let known: ReadonlySet<string> = new Set();
let readAt = -Infinity;

/**
 * Whether `address` (canonical text, IPv4-mapped forms already unwrapped) is held by this host.
 * A link-local peer comes with its zone (`fe80::1%eth0`), the host's list without (red team 29).
 */
export function isHostAddress(address: string, now = performance.now()): boolean {
  if (now - readAt >= REFRESH_MS) {
    known = readHostAddresses();
    readAt = now;
  }
  const zone = address.indexOf('%');
  return known.has(zone === -1 ? address : address.slice(0, zone));
}

function readHostAddresses(): ReadonlySet<string> {
  const found = new Set<string>();
  for (const entries of Object.values(networkInterfaces())) {
    for (const entry of entries ?? []) found.add(entry.address);
  }
  return found;
}
