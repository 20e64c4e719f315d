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
 * A read is one ZREVRANGEBYSCORE: one round trip. Recording is a background write (never blocks).
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
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[5]) + 1))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. horizon)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
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

export class RedisHistoryStore implements HistoryStore {
  private retentionMs = 0;

  constructor(
    private readonly conn: RedisConnection,
    private readonly prefix: string,
    private readonly now: () => number = Date.now,
  ) {}

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
    const keys = [`${this.prefix}hist:${key}`, `${this.prefix}hids:${key}`];
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
    this.conn.write(() => this.conn.evalInBackground(RECORD, keys, args(this.now())), true);
  }

  read(key: string, now: number): Promise<readonly HistoryCall[] | null> {
    if (this.retentionMs === 0) return Promise.resolve([]);
    const from = now - this.retentionMs;
    return this.conn
      .read(() =>
        this.conn.command(['ZREVRANGEBYSCORE', `${this.prefix}hist:${key}`, '+inf', String(from), 'LIMIT', '0', String(MAX_CALLS_PER_KEY)]),
      )
      .then((reply) => {
        const calls: HistoryCall[] = [];
        for (const member of Array.isArray(reply) ? reply : []) {
          const call = parseStored(String(member));
          if (call) calls.push(call);
        }
        return calls;
      });
  }
}

function parseStored(text: string): HistoryCall | null {
  try {
    const [, at, tool, callId, server, sessionId, host, address, dispatched] = JSON.parse(text) as Stored;
    return { at, tool, callId, server, sessionId, host, address: address === null ? null : parseIpLiteral(address), dispatched };
  } catch {
    return null;
  }
}
