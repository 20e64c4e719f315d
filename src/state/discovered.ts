/**
 * Observe mode's record of destinations no rule covered: per (server, tool, host, port), a count
 * and first/last seen. Bounded in entries and in the characters of the names they hold: the
 * guarded server chooses its tool name (and, without `auth.users`, its user name), so a flood of
 * unique, header-sized names must not grow it to hundreds of megabytes.
 */
import type { DiscoveredDestination, DiscoveredLog } from './types.js';

export type { DiscoveredDestination } from './types.js';

/** The one-process log (`state.store: memory`). */
export class DiscoveredStore implements DiscoveredLog {
  private readonly entries = new Map<string, DiscoveredDestination>();
  /** Characters of the keys held (each key spells the entry's names once). */
  private chars = 0;
  dropped = 0;

  constructor(
    private readonly limit = 10_000,
    private readonly charLimit = 4_000_000,
  ) {}

  /** Records one call; returns the entry when it is new (to log `egress.discovered` once). */
  record(
    server: string,
    tool: string | null,
    host: string,
    port: number,
    onFirstSeen?: (entry: DiscoveredDestination) => void,
    now = new Date(),
  ): DiscoveredDestination | null {
    const key = `${server}\u0000${tool ?? ''}\u0000${tool === null ? 0 : 1}\u0000${host}\u0000${port}`;
    const existing = this.entries.get(key);
    const stamp = now.toISOString();
    if (existing) {
      existing.count++;
      existing.last_seen = stamp;
      return null;
    }
    if (this.entries.size >= this.limit || this.chars + key.length > this.charLimit) {
      this.dropped++;
      return null;
    }
    const entry: DiscoveredDestination = { server, tool, host, port, count: 1, first_seen: stamp, last_seen: stamp };
    this.entries.set(key, entry);
    this.chars += key.length;
    onFirstSeen?.({ ...entry });
    return entry;
  }

  list(): DiscoveredDestination[] {
    return [...this.entries.values()].map((e) => ({ ...e }));
  }
}
