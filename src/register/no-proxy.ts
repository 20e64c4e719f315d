/**
 * NO_PROXY as curl and undici read it: comma- or space-separated entries; `*` matches every
 * host; an entry matches its host and the names below it (a leading dot is optional); an entry
 * with `:PORT` matches that port only. For http/https requests (fetch gets undici's own).
 */
export function bypassesProxy(noProxy: string | undefined, hostname: string, port: number): boolean {
  if (!noProxy) return false;
  const host = hostname
    .toLowerCase()
    .replace(/^\[|\]$/g, '')
    .replace(/\.$/, '');
  for (const raw of noProxy.split(/[,\s]+/)) {
    const entry = raw.trim().toLowerCase();
    if (!entry) continue;
    if (entry === '*') return true;
    let name = entry;
    let entryPort: number | null = null;
    const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(entry);
    if (bracketed) {
      name = bracketed[1] as string;
      entryPort = bracketed[2] ? Number(bracketed[2]) : null;
    } else if ((entry.match(/:/g) ?? []).length === 1) {
      // host:port (a bare IPv6 address has more than one colon and no port)
      const [h, p] = entry.split(':');
      name = h as string;
      entryPort = /^\d+$/.test(p as string) ? Number(p) : null;
    }
    name = name.replace(/^\*?\./, '');
    if (entryPort !== null && entryPort !== port) continue;
    if (host === name || host.endsWith(`.${name}`)) return true;
  }
  return false;
}
