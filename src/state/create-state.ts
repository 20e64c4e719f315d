/**
 * `state.store`: where registrations, session history and discovered destinations live.
 * `memory` (the default) is one process's own maps, answered without a promise and without
 * loading any Redis code; `redis` shares them between replicas (src/state/redis/), loaded on
 * demand so a single process pays nothing for it.
 */
import type { StateConfig } from '../config/proxy-config.js';
import { DiscoveredStore } from './discovered.js';
import { CallRegistry } from './registry.js';
import type { CallStore, DiscoveredLog, HistoryStore } from './types.js';

export interface State {
  readonly store: 'memory' | 'redis';
  /** For the start-up log line: `memory`, or the Redis URL with its password redacted. */
  readonly description: string;
  readonly calls: CallStore;
  readonly discovered: DiscoveredLog;
  /** Redis: the shared store. Memory: what `memoryHistory` made (null without it). */
  readonly history: HistoryStore | null;
  /** Whether the store can answer now (always true for memory). */
  readonly up: boolean;
  /** Background writes waiting for the store to come back. */
  readonly queuedWrites: number;
  close(): Promise<void>;
}

export interface StateOptions {
  readonly defaultTtlMs: number;
  readonly maxPerClient?: number;
  readonly maxTotal?: number;
  /** Where $MCP_EGRESS_REDIS_PASSWORD is read (process.env in production). */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** The memory session-history store (src/state/history.ts), for `store: memory`. */
  readonly memoryHistory?: () => HistoryStore;
  /** Extra CA for `rediss://` (tests; operators use NODE_EXTRA_CA_CERTS). */
  readonly tlsCa?: string;
  readonly now?: () => number;
  readonly onHealth?: (up: boolean) => void;
  readonly onDropped?: (reason: string) => void;
  readonly onRetried?: () => void;
  readonly warn?: (fields: Record<string, unknown>, message: string) => void;
}

export async function createState(config: StateConfig, options: StateOptions): Promise<State> {
  if (config.store === 'redis') {
    const { createRedisState } = await import('./redis/redis-state.js');
    return createRedisState(config, options);
  }
  const calls = new CallRegistry({ defaultTtlMs: options.defaultTtlMs, maxPerClient: options.maxPerClient, maxTotal: options.maxTotal, now: options.now });
  // The memory registry frees expired registrations as it goes; this timer catches idle ones.
  const sweeper = setInterval(() => calls.sweep(), 10_000).unref();
  return {
    store: 'memory',
    description: 'memory',
    calls,
    discovered: new DiscoveredStore(),
    history: options.memoryHistory?.() ?? null,
    up: true,
    queuedWrites: 0,
    close: async () => clearInterval(sweeper),
  };
}
