/**
 * What the admin API needs of the running proxy, and nothing more: the serving policy, the
 * registered calls, what observe mode discovered, the session history, a reload, the proxy's address for readiness,
 * a warning line, the decision feed and the policy writer. `commands/serve.ts` assembles it (its `Running` has this shape), so the
 * admin API does not depend on the command that starts it.
 */
import type { DecisionFeed } from '../events/decision-feed.js';
import type { EventSink } from '../events/events.js';
import type { PolicyStore } from '../live/policy-store.js';
import type { PolicyWriter } from '../live/policy-writer.js';
import type { CallStore, DiscoveredLog, HistoryStore } from '../state/types.js';

export interface AdminRuntime {
  readonly store: Pick<PolicyStore, 'current' | 'loaded' | 'lastError'>;
  readonly registry: Pick<CallStore, 'register' | 'end' | 'size' | 'open'>;
  readonly discovered: Pick<DiscoveredLog, 'list'>;
  /** Session history: registrations are recorded; `GET /v1/history` and `POST /v1/test` read it. */
  readonly history: Pick<HistoryStore, 'record' | 'read'>;
  /** The state store's health, for `/readyz` (`state.store`). */
  readonly state: { readonly up: boolean; readonly store: 'memory' | 'redis' };
  readonly events: Pick<EventSink, 'warn'>;
  readonly proxy: { readonly address: { address: string; port: number } | null };
  reload(trigger: string): Promise<boolean>;
  /** The recent decisions and their live streams (GET /v1/events, replay). */
  readonly feed: Pick<DecisionFeed, 'recent' | 'subscribe' | 'subscriberCount' | 'limit'>;
  /** The policy file's writer (the edit routes). */
  readonly policyWriter: Pick<PolicyWriter, 'write'>;
}
