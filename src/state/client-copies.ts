/**
 * Every call recorded under its session is recorded under its client identity's key as well.
 *
 * Threat: a server's connections that carry no session are decided on its client identity's
 * history: a child process a tool starts (curl, git, python: the proxy variables reach it, the
 * preload's headers do not), or, under `trust: registered`, a connection after its registration
 * ended. Without this copy, a `read_file` announced in a session is invisible to them, and a
 * `run_curl` right after it goes out (found by attacking a `wrap`ped server). With it, a
 * sequence rule refuses more, never less: a server's session-less connection sees everything
 * that server did in any session.
 */
import type { HistoryCall } from '../policy/types.js';
import type { HistoryStore, MaybePromise } from './types.js';

export function withClientCopies(store: HistoryStore): HistoryStore {
  const copies: HistoryStore = {
    record(call: HistoryCall): void {
      store.record(call);
      if (call.sessionId !== null && call.server !== null) store.record({ ...call, sessionId: null });
    },
    read: (key: string, now: number): MaybePromise<readonly HistoryCall[] | null> => store.read(key, now),
    setRetention: (seconds: number) => store.setRetention(seconds),
    get retentionSeconds() {
      return store.retentionSeconds;
    },
  };
  // Only where the store has it (a shared store): its absence is what tells the caller to read in turn.
  const combined = store.readWithRegistrations?.bind(store);
  if (combined) copies.readWithRegistrations = combined;
  return copies;
}
