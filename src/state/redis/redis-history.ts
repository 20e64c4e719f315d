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
 * A read is one script (the lost mark, then ZREVRANGEBYSCORE): one round trip. A decision that
 * must first find registrations (`trust: registered`, or no attribution header) reads them and
 * the histories they lead to in one script too (`readWithRegistrations`): still one round trip,
 * not a lookup and then a read. Recording is a background write (never blocks). `hids` is capped
 * at four times the calls per key.
 *
 * Losing a write fails open (a sequence rule would not see the call), so this replica keeps what
 * it has sent and not yet seen acknowledged: a read merges the key's calls pending when it was
 * sent (a `fetch` decided while its `read_file` is still queued for a Redis that was briefly away
 * still sees it), and a write that was dropped (retry queue full, rejected, outcome unknown) makes the key's
 * history unreadable (`null`, so `state_unavailable`) until the dropped call would have left the
 * window; past `MAX_UNRELIABLE_KEYS` such keys, every key is. Another replica cannot know of this
 * replica's drops: the dropped-writes counter is what an operator alerts on (README).
 */
import { randomBytes } from 'node:crypto';
import { parseIpLiteral } from '../../net/address.js';
import type { HistoryCall } from '../../policy/types.js';
import { historyKey, MAX_CALLS_PER_KEY } from '../types.js';
import type { CallStore, HistoryStore, RegisteredCall, RegistrationsQuery, RegistrationsWithHistories } from '../types.js';
import { script } from './connection.js';
import type { RedisConnection } from './connection.js';
import { inRegistrationOrder, parseRegistration, registrationsKey } from './redis-calls.js';

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

/**
 * A decision's registration lookup and the histories it needs, in one round trip: the client's
 * registration of call id ARGV[1] (or, with '', all of them), and for each live one the history of
 * its key (its session, else the client's), as READ reads it; with no open call found, the history
 * of the fallback key ARGV[4]. Each entry: call id, stored value, the key read, the history (nil:
 * lost to the cap). The key is answered so the replica can check it against its own reading of
 * the registration (a mismatch is not vouched for). KEYS[1]: the client's hash; ARGV: call id,
 * prefix, client, fallback key, window start, now, most calls.
 */
const READ_WITH_REGISTRATIONS = script(`
local prefix, now = ARGV[2], tonumber(ARGV[6])
local function history(key)
  local lost = tonumber(redis.call('GET', prefix .. 'hlost:' .. key) or '0')
  if lost > now then return false end
  return redis.call('ZREVRANGEBYSCORE', prefix .. 'hist:' .. key, '+inf', ARGV[5], 'LIMIT', 0, ARGV[7])
end
local found = {}
if ARGV[1] ~= '' then
  local value = redis.call('HGET', KEYS[1], ARGV[1])
  if value then found = {ARGV[1], value} end
else
  found = redis.call('HGETALL', KEYS[1])
end
local out = {}
for i = 1, #found, 2 do
  local expires, json = string.match(found[i + 1], '^(%d+)|(.*)$')
  if expires and tonumber(expires) > now then
    local ok, parsed = pcall(cjson.decode, json)
    local session = ok and type(parsed) == 'table' and parsed[2]
    local key = type(session) == 'string' and ('session:' .. session) or ('server:' .. ARGV[3])
    out[#out + 1] = {found[i], found[i + 1], key, history(key)}
  end
end
if #out == 0 and ARGV[1] == '' then out[1] = {'', '', ARGV[4], history(ARGV[4])} end
return out
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

/** A call sent (or queued) and not yet acknowledged; `added` and `settled` are `tick`s. */
interface Pending {
  readonly call: HistoryCall;
  readonly added: number;
  settled: number;
}

export class RedisHistoryStore implements HistoryStore {
  private retentionMs = 0;
  /**
   * Calls sent (or queued), by key, until acknowledged; an acknowledged one stays while a read
   * sent before its acknowledgement is out (that read may have missed it in Redis). A read merges
   * the entries pending when it was sent: those a combined read learns the key of only from
   * Redis's answer too.
   */
  private readonly pending = new Map<string, Pending[]>();
  /** Settled entries still in `pending`, in settling order. */
  private readonly settledQueue: Array<{ readonly key: string; readonly entry: Pending }> = [];
  /** Reads out, in sending order (the finished ones leave from the head): the `tick` each was sent at. */
  private readonly readsOut: Array<{ readonly tick: number; done: boolean }> = [];
  /** Orders additions, acknowledgements and reads sent. */
  private tick = 0;
  /** Keys with a dropped write: until when their history cannot be vouched for. */
  private readonly unreliable = new Map<string, number>();
  private allUnreliableUntil = 0;

  constructor(
    private readonly conn: RedisConnection,
    private readonly prefix: string,
    private readonly now: () => number = Date.now,
    /** The registrations in the same Redis, for the combined read (`readWithRegistrations`). */
    private readonly registrations: CallStore | null = null,
  ) {
    conn.loadForReads(READ);
    conn.loadForReads(READ_WITH_REGISTRATIONS);
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
    const entry: Pending = { call, added: ++this.tick, settled: Infinity };
    const pending = this.pending.get(key);
    if (pending) pending.push(entry);
    else this.pending.set(key, [entry]);
    this.conn.write(
      () => this.conn.evalInBackground(RECORD, keys, args(this.now())),
      true,
      (applied) => this.settled(key, entry, applied),
    );
  }

  private settled(key: string, entry: Pending, applied: boolean): void {
    entry.settled = ++this.tick;
    this.settledQueue.push({ key, entry });
    this.prune();
    if (applied) return;
    const until = entry.call.at + this.retentionMs;
    if (this.unreliable.size >= MAX_UNRELIABLE_KEYS && !this.unreliable.has(key)) {
      const now = this.now();
      for (const [k, u] of this.unreliable) if (u <= now) this.unreliable.delete(k);
    }
    if (this.unreliable.size >= MAX_UNRELIABLE_KEYS && !this.unreliable.has(key))
      this.allUnreliableUntil = Math.max(this.allUnreliableUntil, until);
    else this.unreliable.set(key, Math.max(this.unreliable.get(key) ?? 0, until));
  }

  /** Drops the acknowledged entries no read out can need (settled before the oldest read out was sent). */
  private prune(): void {
    const bound = this.readsOut[0]?.tick ?? Infinity;
    for (let head = this.settledQueue[0]; head && head.entry.settled <= bound; head = this.settledQueue[0]) {
      this.settledQueue.shift();
      const list = this.pending.get(head.key);
      const i = list ? list.indexOf(head.entry) : -1;
      if (list && i >= 0) list.splice(i, 1);
      if (list?.length === 0) this.pending.delete(head.key);
    }
  }

  private readSent(): { readonly tick: number; done: boolean } {
    const out = { tick: this.tick, done: false };
    this.readsOut.push(out);
    return out;
  }

  private readDone(out: { done: boolean }): void {
    out.done = true;
    while (this.readsOut[0]?.done) this.readsOut.shift();
    this.prune();
  }

  /** False while `key` (or every key) has a dropped write inside the window. */
  private vouched(key: string, now: number): boolean {
    if (now < this.allUnreliableUntil) return false;
    const until = this.unreliable.get(key);
    if (until === undefined) return true;
    if (now < until) return false;
    this.unreliable.delete(key);
    return true;
  }

  read(key: string, now: number): Promise<readonly HistoryCall[] | null> {
    if (this.retentionMs === 0) return Promise.resolve([]);
    if (!this.vouched(key, now)) return Promise.resolve(null);
    const from = now - this.retentionMs;
    const out = this.readSent();
    return this.conn
      .read(() =>
        this.conn.eval(
          READ,
          [`${this.prefix}hist:${key}`, `${this.prefix}hlost:${key}`],
          [String(from), String(now), String(MAX_CALLS_PER_KEY)],
        ),
      )
      .then(
        (reply) => {
          // Completed before the read is done: what it merges may be pruned once it is.
          const history = this.completed(key, reply, out.tick, from, now);
          this.readDone(out);
          return history;
        },
        (err: unknown) => {
          this.readDone(out);
          throw err;
        },
      );
  }

  readWithRegistrations(registry: CallStore, lookup: RegistrationsQuery, now: number): Promise<RegistrationsWithHistories> | null {
    if (registry !== this.registrations || this.retentionMs === 0) return null;
    const from = now - this.retentionMs;
    const out = this.readSent();
    const args = [
      lookup.callId ?? '',
      this.prefix,
      lookup.client,
      lookup.fallbackKey,
      String(from),
      String(now),
      String(MAX_CALLS_PER_KEY),
    ];
    return this.conn
      .read(() => this.conn.eval(READ_WITH_REGISTRATIONS, [registrationsKey(this.prefix, lookup.client)], args))
      .then(
        (reply) => {
          const found = this.withRegistrations(lookup, reply, out.tick, from, now);
          this.readDone(out);
          return found;
        },
        (err: unknown) => {
          this.readDone(out);
          throw err;
        },
      );
  }

  /** READ_WITH_REGISTRATIONS's answer: the registrations as `CallStore.open`/`find` give them, each with its key's history. */
  private withRegistrations(
    lookup: RegistrationsQuery,
    reply: unknown,
    sentAt: number,
    from: number,
    now: number,
  ): RegistrationsWithHistories {
    const found: Array<{ call: RegisteredCall; history: readonly HistoryCall[] | null }> = [];
    for (const entry of Array.isArray(reply) ? reply : []) {
      const [callId, value, key, history] = Array.isArray(entry) ? (entry as unknown[]) : [];
      if (typeof callId !== 'string' || typeof value !== 'string' || typeof key !== 'string') continue;
      if (callId === '' && value === '') {
        // No open call: the fallback key's history (only an open-calls lookup asks for one).
        const ok = lookup.callId === null && key === lookup.fallbackKey;
        return { calls: [], histories: [ok ? this.completed(key, history, sentAt, from, now) : null] };
      }
      const call = parseRegistration(lookup.client, callId, value, now);
      if (!call) continue;
      // The script read the key of its own reading of the registration: vouched for only if it is ours too.
      const ok = key === historyKey(call.sessionId, lookup.client);
      found.push({ call, history: ok ? this.completed(key, history, sentAt, from, now) : null });
    }
    found.sort((a, b) => inRegistrationOrder(a.call, b.call));
    return { calls: found.map((f) => f.call), histories: found.map((f) => f.history) };
  }

  /** A key's history from READ's answer, merged with this replica's calls pending when the read was sent. */
  private completed(key: string, reply: unknown, sentAt: number, from: number, now: number): readonly HistoryCall[] | null {
    // Nil (calls lost to the cap), or anything but a list: not vouched for.
    if (!Array.isArray(reply) || !this.vouched(key, now)) return null;
    const calls: HistoryCall[] = [];
    for (const member of reply) {
      const call = parseStored(String(member));
      if (call) calls.push(call);
    }
    const local: HistoryCall[] = [];
    for (const p of this.pending.get(key) ?? []) if (p.added <= sentAt && p.settled > sentAt && p.call.at >= from) local.push(p.call);
    if (local.length === 0) return calls;
    // A pending call that has landed already is in the answer: add only the others.
    const seen = new Set(calls.map(identity));
    const merged = [...local.filter((c) => !seen.has(identity(c))), ...calls];
    return merged.sort((a, b) => b.at - a.at).slice(0, MAX_CALLS_PER_KEY);
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
