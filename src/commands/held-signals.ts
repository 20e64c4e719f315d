/**
 * The process's stop and reload signals, taken before anything listens. A SIGHUP's default
 * action ends the process, and an operator's script or systemd's `ExecReload` may send one as
 * soon as the proxy logs that it listens, which is before the proxy has finished starting
 * (watcher, admin API). So `serve` takes SIGTERM, SIGINT and SIGHUP first thing and holds what
 * comes until it can act on it: a stop, if one came, else one reload for any number of SIGHUPs
 * (the start has just read the file, a reload reads it again). A second stop signal while one
 * is held or being carried out is not held: it ends the process at once, with the signal's
 * default action (a start blocked on a stalled file system, a shutdown that does not finish).
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
  /** Gives the signals back and sends `signal` again: its default action ends the process. */
  force(signal: ServeSignal): void;
}

export function holdSignals(
  source: SignalSource = process,
  raise: (signal: ServeSignal) => void = (signal) => process.kill(process.pid, signal),
): HeldSignals {
  let handle: ((signal: ServeSignal) => void) | null = null;
  const held: ServeSignal[] = [];
  const isStop = (signal: ServeSignal) => signal !== 'SIGHUP';
  const listener = (signal: ServeSignal) => {
    if (handle) handle(signal);
    else if (isStop(signal) && held.some(isStop)) signals.force(signal);
    else held.push(signal);
  };
  const signals: HeldSignals = {
    deliver(to) {
      handle = to;
      const first = held.find(isStop) ?? held[0];
      held.length = 0;
      if (first) to(first);
    },
    release() {
      for (const signal of SIGNALS) source.off(signal, listener);
    },
    force(signal) {
      held.length = 0;
      signals.release();
      raise(signal);
    },
  };
  for (const signal of SIGNALS) source.on(signal, listener);
  return signals;
}
