/** The Redis implementations behind one connection (loaded only with `state.store: redis`). */
import type { StateConfig } from '../../config/proxy-config.js';
import type { State, StateOptions } from '../types.js';
import { RedisConnection } from './connection.js';
import { RedisCallStore } from './redis-calls.js';
import { RedisDiscoveredLog } from './redis-discovered.js';
import { RedisHistoryStore } from './redis-history.js';

export function createRedisState(config: StateConfig, options: StateOptions): State {
  const password = options.env?.MCP_EGRESS_REDIS_PASSWORD;
  const conn = new RedisConnection({
    url: config.redisUrl,
    password: password !== undefined && password !== '' ? password : undefined,
    timeoutMs: config.timeoutMs,
    tlsCa: options.tlsCa,
    onHealth: (up) => options.onHealth?.(up),
    onDropped: (reason) => options.onDropped?.(reason),
    onRetried: () => options.onRetried?.(),
    warn: options.warn,
  });
  conn.start();
  const calls = new RedisCallStore(conn, {
    prefix: config.keyPrefix,
    defaultTtlMs: options.defaultTtlMs,
    maxPerClient: options.maxPerClient,
    maxTotal: options.maxTotal,
    now: options.now,
  });
  return {
    store: 'redis',
    description: conn.redactedUrl,
    calls,
    discovered: new RedisDiscoveredLog(conn, config.keyPrefix),
    // With the registrations beside it: a lookup and the histories it leads to are one round trip.
    history: new RedisHistoryStore(conn, config.keyPrefix, options.now, calls),
    get up() {
      return conn.up;
    },
    get queuedWrites() {
      return conn.queued;
    },
    close: () => conn.close(),
  };
}
