/**
 * Session-history benchmark (`npm run bench -- history`): the memory bound the README states and
 * what recording costs the data path.
 *
 *   memory  10,000 sessions x 100 calls (1,000,000 calls, the default `limits.max_history_calls`),
 *           recorded round-robin as live traffic would be: each call with fresh strings (as read
 *           from headers), call ids of 32 hex characters, half of them egress legs with a host and
 *           the address dialled. Heap after a full GC, per call and in all.
 *   record  one record into a key that holds 100 / 1,000 calls (copy on write: the cost grows
 *           with the key, bounded by its 1,024 calls), and a read.
 */
import { createHash } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { canonicalHost } from '../src/net/address.js';
import type { IpAddress } from '../src/net/address.js';
import type { HistoryCall } from '../src/policy/types.js';
import { MemoryHistoryStore } from '../src/state/history.js';
import { historyKey } from '../src/state/types.js';
import { summarize, table } from './stats.js';

const SESSIONS = 10_000;
const CALLS_PER_SESSION = 100;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** A string as a header parser makes it: a fresh object, not an interned literal. */
const fresh = (s: string) => Buffer.from(s, 'latin1').toString('latin1');
/** Call and session ids as the preload and gateway make them: 128 random bits (here: a fixed pseudo-random spread). */
const hex32 = (n: number) => createHash('md5').update(String(n)).digest('hex');

const ADDRESSES: IpAddress[] = ['93.184.216.34', '10.1.2.3', '2606:4700::1111'].map((a) => {
  const h = canonicalHost(a);
  if (h.kind !== 'ip') throw new Error(a);
  return h.ip;
});

function call(session: number, i: number, at: number): HistoryCall {
  const egress = i % 2 === 1;
  return {
    at,
    tool: fresh(egress ? 'fetch' : 'read_file'),
    callId: fresh(hex32(session * CALLS_PER_SESSION + i)),
    server: fresh(`server-${session % 50}`),
    sessionId: fresh(hex32(session)),
    host: egress ? fresh(`api-${i % 7}.example.com`) : null,
    address: egress ? (ADDRESSES[i % ADDRESSES.length] as IpAddress) : null,
    dispatched: egress ? true : null,
  };
}

function heapMiB(): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed / (1024 * 1024);
}

function memoryRow(): Array<string | number> {
  const start = Date.now();
  const before = heapMiB();
  const store = new MemoryHistoryStore({ now: () => start + 1_000 });
  store.setRetention(3600);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < CALLS_PER_SESSION; i++) for (let s = 0; s < SESSIONS; s++) store.record(call(s, i, start + i));
  const ns = Number(process.hrtime.bigint() - t0);
  const after = heapMiB();
  const calls = store.calls;
  if (calls !== SESSIONS * CALLS_PER_SESSION) throw new Error(`kept ${calls} calls`);
  const row = [
    `${SESSIONS.toLocaleString('en')} sessions x ${CALLS_PER_SESSION} calls`,
    calls.toLocaleString('en'),
    (after - before).toFixed(0),
    (((after - before) * 1024 * 1024) / calls).toFixed(0),
    (ns / calls / 1000).toFixed(2),
  ];
  // Keep the store alive until measured.
  if (store.size !== SESSIONS) throw new Error('sessions');
  return row;
}

function recordCost(size: number): Array<string | number> {
  const start = Date.now();
  const store = new MemoryHistoryStore({ now: () => start });
  store.setRetention(3600);
  for (let i = 0; i < size; i++) store.record(call(1, i, start - 1_000_000 + i));
  const key = historyKey(hex32(1), null);
  const records: number[] = [];
  const reads: number[] = [];
  for (let i = 0; i < 20_000; i++) {
    // A repeated leg of the newest call: the store stays at `size` calls.
    const c = call(1, size - 1, start - 1_000_000 + size + i);
    const t0 = process.hrtime.bigint();
    store.record(c);
    const t1 = process.hrtime.bigint();
    store.read(key, start);
    const t2 = process.hrtime.bigint();
    records.push(Number(t1 - t0) / 1000);
    reads.push(Number(t2 - t1) / 1000);
  }
  const r = summarize(records.slice(5_000));
  const q = summarize(reads.slice(5_000));
  return [`a key holding ${size} calls`, r.median.toFixed(2), r.p99.toFixed(2), q.median.toFixed(2), q.p99.toFixed(2)];
}

export function runHistoryBench(): string {
  const memory = memoryRow();
  const costs = [recordCost(100), recordCost(1_000)];
  return [
    '## Session history (memory store)',
    '',
    table(['history', 'calls kept', 'heap MiB', 'bytes/call', 'record µs/call'], [memory]),
    '',
    table(['record and read', 'record median µs', 'record p99 µs', 'read median µs', 'read p99 µs'], costs),
  ].join('\n');
}
