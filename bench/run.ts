/**
 * `npm run bench`: runs the benchmarks and prints their tables. `npm run bench -- policy` runs one.
 */
import { runPolicyBench } from './policy.bench.js';

const benches: Record<string, () => Promise<string> | string> = {
  policy: runPolicyBench,
};

const wanted = process.argv.slice(2);
for (const [name, bench] of Object.entries(benches)) {
  if (wanted.length > 0 && !wanted.includes(name)) continue;
  process.stdout.write(`${await bench()}\n\n`);
}
