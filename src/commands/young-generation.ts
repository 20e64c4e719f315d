/**
 * Holds V8's young generation at 8 MiB semi-spaces in the `serve` process, as
 * `--max-semi-space-size=8` would (Node 20's default lets them grow to 16 MiB).
 *
 * Why: a proxy's live data is mostly long-lived connections. Opening thousands of tunnels makes
 * every socket object survive a scavenge or two, and V8 doubles the young generation each time
 * the bytes surviving since its last growth exceed its size; once grown it stays grown while
 * the proxy is quiet (V8 shrinks it only after further collections). Measured with 2,000 idle
 * tunnels (the peer bench's S4): 15.1–16.1 KiB of RSS per tunnel with growth to 16 MiB, 12.9
 * with 8, 9.3 with 4; plain-HTTP load spent 1.8%, 2.1% and 4.3% of its CPU in GC with each, so
 * 8 keeps the throughput and drops a quarter of the memory.
 *
 * How: the size cap can only be given on the command line (`node --max-semi-space-size=N`),
 * which the proxy does not control (the operator's unit, container or `npx` starts `node`).
 * V8 reads `--semi-space-growth-factor` each time it grows the young generation, so after each
 * collection the factor is set to 1 (no growth) once the semi-space has reached the cap and back
 * to V8's default 2 while it is below (after V8 shrank it). An operator's own
 * `--max-semi-space-size` or `--semi-space-growth-factor` (in the command line or
 * NODE_OPTIONS) wins: then nothing is changed.
 */
import { PerformanceObserver } from 'node:perf_hooks';
import v8 from 'node:v8';
import { operatorGaveFlag } from './node-flags.js';

export const SEMI_SPACE_CAP_BYTES = 8 * 1024 * 1024;
/** V8's default `--semi-space-growth-factor`. */
const V8_DEFAULT_GROWTH_FACTOR = 2;

/** Whether the operator sized the young generation themselves. */
export function operatorSizedYoungGeneration(execArgv: readonly string[], nodeOptions: string | undefined): boolean {
  return operatorGaveFlag(/^--(max[-_]semi[-_]space[-_]size|semi[-_]space[-_]growth[-_]factor)\b/, execArgv, nodeOptions);
}

/** The young generation's semi-space size now (new space holds two of them). */
export function semiSpaceBytes(): number {
  const newSpace = v8.getHeapSpaceStatistics().find((space) => space.space_name === 'new_space');
  return newSpace === undefined ? 0 : newSpace.space_size / 2;
}

/**
 * Starts holding the young generation at `capBytes` per semi-space; the returned function stops
 * (and lets V8 grow it again). Does nothing when the operator sized it.
 */
export function capYoungGeneration(
  capBytes = SEMI_SPACE_CAP_BYTES,
  execArgv: readonly string[] = process.execArgv,
  nodeOptions = process.env['NODE_OPTIONS'],
): () => void {
  if (operatorSizedYoungGeneration(execArgv, nodeOptions)) return () => {};
  let factor = V8_DEFAULT_GROWTH_FACTOR;
  const setFactor = (wanted: number) => {
    if (wanted === factor) return;
    factor = wanted;
    v8.setFlagsFromString(`--semi-space-growth-factor=${wanted}`);
  };
  const check = () => setFactor(semiSpaceBytes() >= capBytes ? 1 : V8_DEFAULT_GROWTH_FACTOR);
  // One entry per collection, delivered after it: the size V8 left is the size to judge.
  const observer = new PerformanceObserver(check);
  observer.observe({ entryTypes: ['gc'] });
  check();
  return () => {
    observer.disconnect();
    setFactor(V8_DEFAULT_GROWTH_FACTOR);
  };
}
