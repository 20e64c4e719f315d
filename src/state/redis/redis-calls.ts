/**
 * Registered calls in Redis, so a call registered through replica A attributes a connection
 * that lands on replica B. Same contract as the memory registry (registry.ts), including both
 * caps, which hold across replicas because one script checks and registers atomically.
 *
 * Keys (P = `state.key_prefix`):
 * - `P call:<call id>`: the owning client, with the registration's TTL (who owns an id, fleet-wide);
 * - `P client:<client>`: a hash, call id -> `<expiresAt>|<JSON>`; its TTL is the longest of its
 *   calls', and expired fields are dropped by the registration script when the client's cap is reached;
 * - `P calls`: a sorted set, call id by `expiresAt`, counted for `limits.max_registered_calls`
 *   (expired members are removed by the registration script, in O(log n) per member).
 *
 * A read is one command (HGET or HGETALL): one round trip. Expiry is decided by `expiresAt`,
 * written from the registering replica's clock (replicas need synchronised clocks, as any
 * TTL-based fleet does); Redis's TTLs free the memory.
 */
import type { CallStore, Registration, RegisteredCall, RegistrationRefused } from '../types.js';
import { DEFAULT_MAX_PER_CLIENT, DEFAULT_MAX_TOTAL } from '../registry.js';
import { script } from './connection.js';
import type { RedisConnection } from './connection.js';

export interface RedisCallStoreOptions {
  readonly prefix: string;
  readonly defaultTtlMs: number;
  readonly maxPerClient?: number;
  readonly maxTotal?: number;
  readonly now?: () => number;
}

const REGISTER = script(`
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[2] then return 'conflict' end
local now = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if not owner then
  if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[6]) then
    local all = redis.call('HGETALL', KEYS[2])
    local live = 0
    for i = 1, #all, 2 do
      local expires = tonumber(string.match(all[i + 1], '^(%d+)|'))
      if expires <= now then redis.call('HDEL', KEYS[2], all[i]) else live = live + 1 end
    end
    if live >= tonumber(ARGV[6]) then return 'client_limit' end
  end
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[7]) then return 'registry_full' end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
return 'ok'
`);

const END = script(`
local owner = redis.call('GET', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if not owner then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HDEL', ARGV[2] .. owner, ARGV[1])
return 1
`);

export class RedisCallStore implements CallStore {
  private readonly now: () => number;
  private readonly maxPerClient: number;
  private readonly maxTotal: number;
  private readonly allKey: string;

  constructor(
    private readonly conn: RedisConnection,
    private readonly options: RedisCallStoreOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.maxPerClient = options.maxPerClient ?? DEFAULT_MAX_PER_CLIENT;
    this.maxTotal = options.maxTotal ?? DEFAULT_MAX_TOTAL;
    this.allKey = `${options.prefix}calls`;
  }

  private callKey(callId: string): string {
    return `${this.options.prefix}call:${callId}`;
  }

  private clientKey(client: string): string {
    return registrationsKey(this.options.prefix, client);
  }

  async register(input: Registration): Promise<RegisteredCall | RegistrationRefused> {
    const now = this.now();
    const ttl = input.ttlMs ?? this.options.defaultTtlMs;
    const call: RegisteredCall = {
      callId: input.callId,
      tool: input.tool,
      client: input.client,
      sessionId: input.sessionId ?? null,
      registeredAt: now,
      expiresAt: now + ttl,
    };
    const value = `${call.expiresAt}|${JSON.stringify([call.tool, call.sessionId, call.registeredAt])}`;
    const keys = [this.callKey(call.callId), this.clientKey(call.client), this.allKey];
    const args = [call.callId, call.client, value, String(now), String(ttl), String(this.maxPerClient), String(this.maxTotal)];
    const answer = await this.conn.read(() => this.conn.eval(REGISTER, keys, args));
    switch (answer) {
      case 'ok':
        return call;
      case 'conflict':
        return { error: 'call_id is registered for another client', code: 'conflict' };
      case 'client_limit':
        return { error: `too many open calls for client (limit ${this.maxPerClient})`, code: 'client_limit' };
      case 'registry_full':
        return {
          error: `the proxies hold ${this.maxTotal} open registered calls (limits.max_registered_calls); end some or try again later`,
          code: 'registry_full',
        };
      default:
        throw new Error(`unexpected answer from the registration script: ${String(answer).slice(0, 64)}`);
    }
  }

  async end(callId: string): Promise<boolean> {
    const answer = await this.conn.read(() =>
      this.conn.eval(END, [this.callKey(callId), this.allKey], [callId, `${this.options.prefix}client:`]),
    );
    return answer === 1;
  }

  async find(client: string, callId: string): Promise<RegisteredCall | null> {
    const value = await this.conn.read(() => this.conn.command(['HGET', this.clientKey(client), callId]));
    return typeof value === 'string' ? parseRegistration(client, callId, value, this.now()) : null;
  }

  async open(client: string): Promise<RegisteredCall[]> {
    const reply = await this.conn.read(() => this.conn.command(['HGETALL', this.clientKey(client)]));
    const now = this.now();
    const live: RegisteredCall[] = [];
    for (const [callId, value] of pairs(reply)) {
      const call = parseRegistration(client, callId, value, now);
      if (call) live.push(call);
    }
    return live.sort(inRegistrationOrder);
  }

  async size(): Promise<number> {
    const n = await this.conn.read(() => this.conn.command(['ZCOUNT', this.allKey, `(${this.now()}`, '+inf']));
    return Number(n);
  }
}

/** HGETALL's answer (RESP2: a flat list; RESP3: a map) as [field, value] pairs. */
export function pairs(reply: unknown): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  if (Array.isArray(reply)) {
    for (let i = 0; i + 1 < reply.length; i += 2) out.push([String(reply[i]), String(reply[i + 1])]);
  } else if (reply && typeof reply === 'object') {
    for (const [k, v] of Object.entries(reply as Record<string, unknown>)) out.push([k, String(v)]);
  }
  return out;
}

/** The hash of `client`'s registrations (call id -> `<expiresAt>|<JSON>`). */
export function registrationsKey(prefix: string, client: string): string {
  return `${prefix}client:${client}`;
}

/** Open calls in the order they were registered (ties by call id), as the memory registry lists them. */
export function inRegistrationOrder(a: RegisteredCall, b: RegisteredCall): number {
  return a.registeredAt - b.registeredAt || (a.callId < b.callId ? -1 : 1);
}

/** A stored registration, or null when it has expired (or does not parse: never trusted). */
export function parseRegistration(client: string, callId: string, value: string, now: number): RegisteredCall | null {
  const bar = value.indexOf('|');
  const expiresAt = Number(value.slice(0, bar));
  if (bar < 1 || !(expiresAt > now)) return null;
  try {
    const [tool, sessionId, registeredAt] = JSON.parse(value.slice(bar + 1)) as [string, string | null, number];
    if (typeof tool !== 'string') return null;
    return {
      callId,
      tool,
      client,
      sessionId: typeof sessionId === 'string' ? sessionId : null,
      registeredAt: Number(registeredAt),
      expiresAt,
    };
  } catch {
    return null;
  }
}
