/**
 * "Self": whether an address and port reach one of this process's own listeners (the proxy
 * port, the admin API). The baseline refuses them as `self` (a request loop, or the guarded
 * server using the proxy to reach the admin API with the proxy's source address); the dry runs
 * (`test`, `POST /v1/test`) use the same check so they say what the live proxy would do.
 *
 * Scope: matching only. Which listeners exist is the caller's to say (an option, so a dry run
 * can pass the addresses a config file names, and tests can pass fakes); the host's interface
 * addresses come from `os.networkInterfaces()` unless another source is given.
 */
import { networkInterfaces } from 'node:os';
import { canonicalHost, isLoopbackIp } from './address.js';
import type { IpAddress } from './address.js';

export interface Listener {
  readonly address: string;
  readonly port: number;
}

const UNSPECIFIED = new Set(['0.0.0.0', '::']);
const INTERFACE_CACHE_MS = 5_000;

export function isUnspecifiedAddress(address: string): boolean {
  return UNSPECIFIED.has(address);
}

/** The host's interface addresses, canonical, read at most every 5 s (it is a syscall). */
export function interfaceAddresses(read: () => ReturnType<typeof networkInterfaces> = networkInterfaces): () => ReadonlySet<string> {
  let cache: { at: number; addresses: Set<string> } | null = null;
  return () => {
    const now = Date.now();
    if (cache && now - cache.at < INTERFACE_CACHE_MS) return cache.addresses;
    const addresses = new Set<string>();
    for (const list of Object.values(read())) {
      for (const info of list ?? []) {
        const h = canonicalHost(info.address.split('%')[0] as string);
        if (h.kind === 'ip') addresses.add(h.host);
      }
    }
    cache = { at: now, addresses };
    return addresses;
  };
}

/** Listener addresses in canonical text (what `isSelf` compares against). */
export function canonicalListeners(listeners: ReadonlyArray<Listener>): Listener[] {
  return listeners.map((l) => {
    const h = canonicalHost(l.address);
    return { address: h.kind === 'ip' ? h.host : l.address, port: l.port };
  });
}

export interface SelfCheckOptions {
  /** The listeners to protect, canonical (see canonicalListeners); read on every check. */
  readonly listeners: () => ReadonlyArray<Listener>;
  /** The host's own addresses (default: its interfaces). */
  readonly localAddresses?: () => ReadonlySet<string>;
}

/**
 * Whether `ip:port` reaches one of the listeners. A connect to 0.0.0.0 or :: lands on the
 * host itself, so it is ours whatever address we listen on; a wildcard listener also takes
 * every local and every loopback address (all of 127/8, not only the 127.0.0.1 that the
 * interface list shows).
 */
export function createSelfCheck(options: SelfCheckOptions): (ip: IpAddress, port: number) => boolean {
  const localAddresses = options.localAddresses ?? interfaceAddresses();
  return (ip, port) => {
    for (const l of options.listeners()) {
      if (l.port !== port) continue;
      if (l.address === ip.text || UNSPECIFIED.has(ip.text)) return true;
      if (UNSPECIFIED.has(l.address) && (isLoopbackIp(ip) || localAddresses().has(ip.text))) return true;
    }
    return false;
  };
}

/**
 * This process's own listeners, canonical: the proxy's address (`own`, null until it listens)
 * and `others` (the admin API). Read once after listen (server.address() is a syscall) and
 * kept until `refresh` (another listener started).
 */
export class OwnListeners {
  private cache: ReadonlyArray<Listener> | null = null;

  constructor(
    private readonly own: () => Listener | null,
    private readonly others: () => ReadonlyArray<Listener> = () => [],
  ) {}

  readonly list = (): ReadonlyArray<Listener> => {
    if (this.cache) return this.cache;
    const own = this.own();
    const listeners = canonicalListeners([...(own ? [own] : []), ...this.others()]);
    if (own) this.cache = listeners;
    return listeners;
  };

  refresh(): void {
    this.cache = null;
  }
}
