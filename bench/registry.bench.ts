/**
 * Call registry benchmark (issue 10: each registration swept the whole registry, so N
 * registrations took time in N²). Registers 100,000 calls in batches of 10,000 (1,000 clients,
 * 100 calls each, ids of 32 hex characters as a gateway sends), timing each batch: linear means
 * every batch takes about as long as the first. Then the same with churn (each call ended after
 * registration, the gateway's normal life), with short TTLs expiring as it goes, and the heap used
 * per open registration.
 */
import { CallRegistry } from '../src/state/registry.js';
import type { CallRegistryOptions } from '../src/state/registry.js';
import { table } from './stats.js';

const TOTAL = 100_000;
const BATCH = 10_000;
const CLIENTS = 1_000;

function callId(i: number): string {
  return i.toString(16).padStart(32, '0');
}

/** Milliseconds per batch of BATCH registrations; `after` runs after each registration. */
function batches(registry: CallRegistry, ttlMs: number | undefined, after?: (id: string) => void): number[] {
  const times: number[] = [];
  for (let b = 0; b < TOTAL / BATCH; b++) {
    const started = process.hrtime.bigint();
    for (let i = b * BATCH; i < (b + 1) * BATCH; i++) {
      const id = callId(i);
      const r = registry.register({
        callId: id,
        tool: 'http_fetch',
        client: `client-${i % CLIENTS}`,
        sessionId: `session-${i % 97}`,
        ...(ttlMs ? { ttlMs } : {}),
      });
      if ('error' in r) throw new Error(`registration ${i} refused: ${r.error}`);
      after?.(id);
    }
    times.push(Number(process.hrtime.bigint() - started) / 1e6);
  }
  return times;
}

function gc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

export function runRegistryBench(): string {
  // No global cap in the way of the measurement (the default is the production bound).
  const options = { defaultTtlMs: 3_600_000, maxTotal: TOTAL, maxPerClient: 1024 } as CallRegistryOptions;
  const rows: Array<Array<string | number>> = [];
  const row = (name: string, times: number[]) => {
    const total = times.reduce((a, b) => a + b, 0);
    rows.push([name, ...times.map((t) => t.toFixed(1)), total.toFixed(0), ((total * 1e6) / TOTAL).toFixed(0)]);
  };

  gc();
  const heapBefore = process.memoryUsage().heapUsed;
  const open = new CallRegistry(options);
  row('open (none ended)', batches(open, undefined));
  gc();
  const perCall = (process.memoryUsage().heapUsed - heapBefore) / open.size();

  const churn = new CallRegistry(options);
  row(
    'register + end',
    batches(churn, undefined, (id) => churn.end(id)),
  );

  let now = 0;
  const expiring = new CallRegistry({ ...options, now: () => now });
  // A clock that moves 1 ms per registration with 5 s TTLs: about 5,000 open at any time.
  row(
    '5 s TTLs expiring',
    batches(expiring, 5_000, () => (now += 1)),
  );

  const headers = ['workload', ...Array.from({ length: TOTAL / BATCH }, (_, i) => `batch ${i + 1} ms`), 'total ms', 'ns/registration'];
  const gcNote = (globalThis as { gc?: unknown }).gc ? '' : ' (run node with --expose-gc for a steadier figure)';
  return [
    `Call registry: ${TOTAL.toLocaleString('en')} registrations in batches of ${BATCH.toLocaleString('en')} (${CLIENTS} clients)`,
    table(headers, rows),
    `heap per open registration: ${Math.round(perCall)} bytes${gcNote}`,
  ].join('\n');
}
