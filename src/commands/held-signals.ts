/**
 * The process's stop and reload signals, taken before anything listens. A SIGHUP's default
 * action ends the process, and an operator's script or systemd's `ExecReload` may send one as
 * soon as the proxy logs that it listens, which is before the proxy has finished starting
 * (watcher, admin API). So `serve` takes SIGTERM, SIGINT and SIGHUP first thing and holds what
 * comes until it can act on it: a stop, if one came, else one reload for any number of SIGHUPs
 * (the start has just read the file, a reload reads it again).
 */
export type ServeSignal = 'SIGTERM' | 'SIGINT' | 'SIGHUP';

const SIGNALS: readonly ServeSignal[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];

/** `process`, or a stand-in in tests. */
export interface SignalSource {
  on(signal: ServeSignal, listener: (signal: ServeSignal) => void): unknown;
  off(signal: ServeSignal, listener: (signal: ServeSignal) => void): unknown;
}

export interface HeldSignals {
  /** From now on signals go to `handle`; the held ones first (a stop if any came, else one SIGHUP). */
  deliver(handle: (signal: ServeSignal) => void): void;
  /** Gives the signals back to their default actions (the start failed; the process is ending). */
  release(): void;
}

export function holdSignals(source: SignalSource = process): HeldSignals {
  let handle: ((signal: ServeSignal) => void) | null = null;
  const held: ServeSignal[] = [];
  const listener = (signal: ServeSignal) => (handle ? handle(signal) : held.push(signal));
  for (const signal of SIGNALS) source.on(signal, listener);
  return {
    deliver(to) {
      handle = to;
      const stop = held.find((signal) => signal !== 'SIGHUP');
      const first = stop ?? held[0];
      held.length = 0;
      if (first) to(first);
    },
    release() {
      for (const signal of SIGNALS) source.off(signal, listener);
    },
  };
}
