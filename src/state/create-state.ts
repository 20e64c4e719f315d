/**
 * `state.store`: where registrations, session history and discovered destinations live.
 * `memory` (the default) is one process's own maps, answered without a promise and without
 * loading any Redis code; `redis` shares them between replicas (src/state/redis/), loaded on
 * demand so a single process pays nothing for it.
 */
import type { StateConfig } from '../config/proxy-config.js';
import { DiscoveredStore } from './discovered.js';
import { CallRegistry } from './registry.js';
import type { State, StateOptions } from './types.js';

export type { State, StateOptions } from './types.js';

export async function createState(config: StateConfig, options: StateOptions): Promise<State> {
  if (config.store === 'redis') {
    const { createRedisState } = await import('./redis/redis-state.js');
    return createRedisState(config, options);
  }
  const calls = new CallRegistry({
    defaultTtlMs: options.defaultTtlMs,
    maxPerClient: options.maxPerClient,
    maxTotal: options.maxTotal,
    now: options.now,
  });
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
