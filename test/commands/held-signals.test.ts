/**
 * Signals taken before the proxy is up: none is lost or acted on early, a stop outranks
 * reloads, any number of held SIGHUPs make one reload, a second stop during the start ends the
 * process at once, and after `deliver` each goes straight through. The real process's side is
 * in serve.test.ts.
 */
import { EventEmitter } from 'node:events';
import t from 'tap';
import { holdSignals } from '../../src/commands/held-signals.js';
import type { ServeSignal, SignalSource } from '../../src/commands/held-signals.js';

const source = () => {
  const emitter = new EventEmitter();
  return { emitter, source: emitter as unknown as SignalSource, send: (s: ServeSignal) => emitter.emit(s, s) };
};

t.test('what is held, and what deliver hands on', async (t) => {
  const rows: Array<{ name: string; before: ServeSignal[]; first: ServeSignal[] }> = [
    { name: 'nothing held: nothing handed on', before: [], first: [] },
    { name: 'SIGHUPs during the start: one reload', before: ['SIGHUP', 'SIGHUP', 'SIGHUP'], first: ['SIGHUP'] },
    { name: 'a stop outranks reloads held before it', before: ['SIGHUP', 'SIGTERM', 'SIGHUP'], first: ['SIGTERM'] },
    { name: 'SIGINT held like SIGTERM', before: ['SIGHUP', 'SIGINT'], first: ['SIGINT'] },
  ];
  for (const row of rows) {
    const { source: s, send } = source();
    const held = holdSignals(s, () => t.fail('nothing raised'));
    const seen: ServeSignal[] = [];
    for (const signal of row.before) send(signal);
    t.same(seen, [], `${row.name}: nothing acted on before deliver`);
    held.deliver((signal) => seen.push(signal));
    t.same(seen, row.first, row.name);
    send('SIGHUP');
    send('SIGTERM');
    t.same(seen, [...row.first, 'SIGHUP', 'SIGTERM'], `${row.name}: later ones go straight through, each`);
  }
});

t.test('release gives every signal back', async (t) => {
  const { emitter, source: s } = source();
  const held = holdSignals(s, () => t.fail('nothing raised'));
  t.same(
    (['SIGTERM', 'SIGINT', 'SIGHUP'] as const).map((signal) => emitter.listenerCount(signal)),
    [1, 1, 1],
    'each taken once',
  );
  held.release();
  t.same(
    (['SIGTERM', 'SIGINT', 'SIGHUP'] as const).map((signal) => emitter.listenerCount(signal)),
    [0, 0, 0],
  );
});

t.test('a second stop during the start is not held: it ends the process', async (t) => {
  const { emitter, source: s, send } = source();
  const raised: ServeSignal[] = [];
  const held = holdSignals(s, (signal) => raised.push(signal));
  send('SIGHUP');
  send('SIGHUP');
  send('SIGTERM');
  t.same(raised, [], 'reloads and a first stop are held');
  send('SIGINT');
  t.same(raised, ['SIGINT'], 'the second stop is sent again, to its default action');
  t.equal(emitter.listenerCount('SIGINT'), 0, 'with the signals given back first');
  held.deliver(() => t.fail('nothing is delivered after that'));
});
