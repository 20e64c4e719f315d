/**
 * Observe mode's discovered destinations in Redis: every replica counts into the same hashes,
 * so `GET /v1/discovered` (and the draft allow-list) on any replica shows the whole fleet's
 * traffic with exact counts (HINCRBY in one script, no read-modify-write across replicas).
 *
 * Keys (P = `state.key_prefix`): `P disc:count`, `P disc:first`, `P disc:last` (hashes keyed by
 * the entry as JSON `[server, tool, host, port]`) and `P disc:chars` (the bytes of the keys
 * held). The same bounds as the memory log (entries, characters of names the guarded server
 * chooses), enforced fleet-wide by the script. Recording is a background write; the script
 * answers the new count, so exactly one replica (the one that wrote 1) logs `egress.discovered`.
 * A count is not idempotent: a write whose answer was lost (Redis died mid-write) is not
 * retried, and is counted as dropped (`unknown_outcome`), rather than possibly counted twice.
 */
import type { DiscoveredDestination, DiscoveredLog } from '../types.js';
import { script } from './connection.js';
import type { RedisConnection } from './connection.js';
import { pairs } from './redis-calls.js';

const RECORD = script(`
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  local chars = tonumber(redis.call('GET', KEYS[4]) or '0')
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) or chars + #ARGV[1] > tonumber(ARGV[4]) then return -1 end
  redis.call('INCRBY', KEYS[4], #ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local last = redis.call('HGET', KEYS[3], ARGV[1])
if not last or last < ARGV[2] then redis.call('HSET', KEYS[3], ARGV[1], ARGV[2]) end
return n
`);

export class RedisDiscoveredLog implements DiscoveredLog {
  /** Entries refused by a bound (this replica's writes). */
  dropped = 0;
  private readonly keys: readonly string[];

  constructor(
    private readonly conn: RedisConnection,
    prefix: string,
    private readonly limit = 10_000,
    private readonly charLimit = 4_000_000,
  ) {
    this.keys = [`${prefix}disc:count`, `${prefix}disc:first`, `${prefix}disc:last`, `${prefix}disc:chars`];
  }

  record(server: string, tool: string | null, host: string, port: number, onFirstSeen?: (entry: DiscoveredDestination) => void): void {
    const field = JSON.stringify([server, tool, host, port]);
    const stamp = new Date().toISOString();
    this.conn.write(async () => {
      const n = Number(await this.conn.evalInBackground(RECORD, this.keys, [field, stamp, String(this.limit), String(this.charLimit)]));
      if (n === -1) this.dropped++;
      else if (n === 1) onFirstSeen?.({ server, tool, host, port, count: 1, first_seen: stamp, last_seen: stamp });
    }, false);
  }

  async list(): Promise<DiscoveredDestination[]> {
    const [counts, firsts, lasts] = await this.conn.read(() =>
      Promise.all([
        this.conn.command(['HGETALL', this.keys[0] as string]),
        this.conn.command(['HGETALL', this.keys[1] as string]),
        this.conn.command(['HGETALL', this.keys[2] as string]),
      ]),
    );
    const first = new Map(pairs(firsts));
    const last = new Map(pairs(lasts));
    const out: DiscoveredDestination[] = [];
    for (const [field, count] of pairs(counts)) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(field);
      } catch {
        continue;
      }
      if (!Array.isArray(parsed) || parsed.length !== 4) continue;
      const [server, tool, host, port] = parsed as [string, string | null, string, number];
      const firstSeen = first.get(field) ?? '';
      out.push({ server, tool, host, port, count: Number(count), first_seen: firstSeen, last_seen: last.get(field) ?? firstSeen });
    }
    // Hash order is Redis's; the memory log lists in first-seen order, and so does this.
    return out.sort((a, b) => (a.first_seen < b.first_seen ? -1 : a.first_seen > b.first_seen ? 1 : 0));
  }
}
