/**
 * Session history in Redis (interface.md "Session history"), so a `read_file` recorded by
 * replica A is an earlier call for a `fetch` decided by replica B.
 *
 * Keys (P = `state.key_prefix`, K = `historyKey(...)`):
 * - `P hist:K`: a sorted set of recorded calls scored by `at` (ms). A member is the call as
 *   JSON with a random nonce, so a retried write adds nothing twice, and a late retry still
 *   lands in time order. Trimmed to the retention window and to `MAX_CALLS_PER_KEY` (oldest
 *   first) by the same script that adds, and the key's TTL is the retention: no sweeps.
 * - `P hids:K`: call ids already recorded for K. A call is recorded once per call id and key:
 *   a registration or announcement whose id is known adds nothing; an egress call always adds
 *   its own member (its host, address and outcome are what `after.hosts` asks about).
 *
 * - `P hlost:K`: set when the per-key cap drops calls still inside the window: until when the
 *   newest of them leaves it. A read answers nil (`state_unavailable`) until then, as the memory
 *   store does: flooding a session must not push its `read_file` out of sight.
 *
 * A read is one script (the lost mark, then ZREVRANGEBYSCORE): one round trip. Recording is a
 * background write (never blocks). `hids` is capped at four times the calls per key.
 *
 * Losing a write fails open (a sequence rule would not see the call), so this replica keeps what
 * it has sent and not yet seen acknowledged: a read merges the key's pending calls (a `fetch`
 * decided while its `read_file` is still queued for a Redis that was briefly away still sees it),
 * and a write that was dropped (retry queue full, rejected, outcome unknown) makes the key's
 * history unreadable (`null`, so `state_unavailable`) until the dropped call would have left the
 * window; past `MAX_UNRELIABLE_KEYS` such keys, every key is. Another replica cannot know of this
 * replica's drops: the dropped-writes counter is what an operator alerts on (README).
 */
import { randomBytes } from 'node:crypto';
import { parseIpLiteral } from '../../net/address.js';
import type { HistoryCall } from '../../policy/types.js';
import { historyKey, MAX_CALLS_PER_KEY } from '../types.js';
import type { HistoryStore } from '../types.js';
import { script } from './connection.js';
import type { RedisConnection } from './connection.js';

const RECORD = script(`
local at = tonumber(ARGV[2])
local horizon = tonumber(ARGV[6]) - tonumber(ARGV[4])
if ARGV[3] ~= '' then
  local added = redis.call('ZADD', KEYS[2], 'NX', at, ARGV[3])
  if added == 0 and ARGV[7] == '0' then return 0 end
end
redis.call('ZADD', KEYS[1], at, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. horizon)
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[5])
if over > 0 then
  -- Calls still inside the window are about to go: the key cannot be vouched for until the
  -- newest of them has left it (read answers nil until then).
  local gone = redis.call('ZRANGE', KEYS[1], over - 1, over - 1, 'WITHSCORES')
  local lost = tonumber(gone[2]) + tonumber(ARGV[4])
  local prev = tonumber(redis.call('GET', KEYS[3]) or '0')
  if lost > prev then redis.call('SET', KEYS[3], lost, 'PX', math.max(1, lost - tonumber(ARGV[6]))) end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. horizon)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(4 * tonumber(ARGV[5]) + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
`);

/** A key's calls inside the window, newest first; nil while calls inside the window were lost to the cap. */
const READ = script(`
local lost = tonumber(redis.call('GET', KEYS[2]) or '0')
if lost > tonumber(ARGV[2]) then return false end
return redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', ARGV[1], 'LIMIT', 0, ARGV[3])
`);

type Stored = [
  nonce: string,
  at: number,
  tool: string | null,
  callId: string | null,
  server: string | null,
  sessionId: string | null,
  host: string | null,
  address: string | null,
  dispatched: boolean | null,
];

/** Keys remembered as having lost a write; beyond this, every key counts as having lost one. */
export const MAX_UNRELIABLE_KEYS = 10_000;

export class RedisHistoryStore implements HistoryStore {
  private retentionMs = 0;
  /** Calls sent (or queued) and not yet acknowledged, by key. */
  private readonly pending = new Map<string, HistoryCall[]>();
  /** Keys with a dropped write: until when their history cannot be vouched for. */
  private readonly unreliable = new Map<string, number>();
  private allUnreliableUntil = 0;

  constructor(
    private readonly conn: RedisConnection,
    private readonly prefix: string,
    private readonly now: () => number = Date.now,
  ) {
    conn.loadForReads(READ);
  }

  get retentionSeconds(): number {
    return this.retentionMs / 1000;
  }

  setRetention(seconds: number): void {
    this.retentionMs = Math.max(0, seconds) * 1000;
  }

  record(call: HistoryCall): void {
    if (this.retentionMs === 0) return;
    const key = historyKey(call.sessionId, call.server);
    const stored: Stored = [
      randomBytes(6).toString('base64url'),
      call.at,
      call.tool,
      call.callId,
      call.server,
      call.sessionId,
      call.host,
      call.address?.text ?? null,
      call.dispatched,
    ];
    const keys = [`${this.prefix}hist:${key}`, `${this.prefix}hids:${key}`, `${this.prefix}hlost:${key}`];
    // `now` is read when sent, so a retried write is trimmed against the time it lands.
    const args = (now: number) => [
      JSON.stringify(stored),
      String(call.at),
      call.callId ?? '',
      String(this.retentionMs),
      String(MAX_CALLS_PER_KEY),
      String(now),
      call.host !== null ? '1' : '0',
    ];
    const pending = this.pending.get(key);
    if (pending) pending.push(call);
    else this.pending.set(key, [call]);
    this.conn.write(
      () => this.conn.evalInBackground(RECORD, keys, args(this.now())),
      true,
      (applied) => this.settled(key, call, applied),
    );
  }

  private settled(key: string, call: HistoryCall, applied: boolean): void {
    const pending = this.pending.get(key);
    const i = pending ? pending.indexOf(call) : -1;
    if (pending && i >= 0) pending.splice(i, 1);
    if (pending?.length === 0) this.pending.delete(key);
    if (applied) return;
    const until = call.at + this.retentionMs;
    if (this.unreliable.size >= MAX_UNRELIABLE_KEYS && !this.unreliable.has(key)) {
      const now = this.now();
      for (const [k, u] of this.unreliable) if (u <= now) this.unreliable.delete(k);
    }
    if (this.unreliable.size >= MAX_UNRELIABLE_KEYS && !this.unreliable.has(key))
      this.allUnreliableUntil = Math.max(this.allUnreliableUntil, until);
    else this.unreliable.set(key, Math.max(this.unreliable.get(key) ?? 0, until));
  }

  read(key: string, now: number): Promise<readonly HistoryCall[] | null> {
    if (this.retentionMs === 0) return Promise.resolve([]);
    if (now < this.allUnreliableUntil) return Promise.resolve(null);
    const until = this.unreliable.get(key);
    if (until !== undefined) {
      if (now < until) return Promise.resolve(null);
      this.unreliable.delete(key);
    }
    const from = now - this.retentionMs;
    const local = this.pending.get(key)?.filter((c) => c.at >= from) ?? [];
    return this.conn
      .read(() =>
        this.conn.eval(
          READ,
          [`${this.prefix}hist:${key}`, `${this.prefix}hlost:${key}`],
          [String(from), String(now), String(MAX_CALLS_PER_KEY)],
        ),
      )
      .then((reply) => {
        if (reply === null) return null;
        const calls: HistoryCall[] = [];
        for (const member of Array.isArray(reply) ? reply : []) {
          const call = parseStored(String(member));
          if (call) calls.push(call);
        }
        if (local.length === 0) return calls;
        // A pending call that has landed already is in the answer: add only the others.
        const seen = new Set(calls.map(identity));
        const merged = [...local.filter((c) => !seen.has(identity(c))), ...calls];
        return merged.sort((a, b) => b.at - a.at).slice(0, MAX_CALLS_PER_KEY);
      });
  }
}

/** What tells two records of a call apart (the stored nonce aside). */
function identity(c: HistoryCall): string {
  return JSON.stringify([c.at, c.tool, c.callId, c.server, c.sessionId, c.host, c.address?.text ?? null, c.dispatched]);
}

function parseStored(text: string): HistoryCall | null {
  try {
    const [, at, tool, callId, server, sessionId, host, address, dispatched] = JSON.parse(text) as Stored;
    return { at, tool, callId, server, sessionId, host, address: address === null ? null : parseIpLiteral(address), dispatched };
  } catch {
    return null;
  }
}
