/**
 * `npm run bench`: runs the benchmarks and prints their tables. `npm run bench -- policy` runs one.
 */
import { runDatapathBench } from './datapath.bench.js';
import { runHistoryBench } from './history.bench.js';
import { runPolicyBench, runSequenceBench } from './policy.bench.js';
import { runRegistryBench } from './registry.bench.js';

const benches: Record<string, () => Promise<string> | string> = {
  policy: runPolicyBench,
  sequence: runSequenceBench,
  datapath: runDatapathBench,
  registry: runRegistryBench,
  history: runHistoryBench,
};

const wanted = process.argv.slice(2).filter((a) => !a.startsWith('--'));
for (const [name, bench] of Object.entries(benches)) {
  if (wanted.length > 0 && !wanted.includes(name)) continue;
  process.stdout.write(`${await bench()}\n\n`);
}
