/**
 * Data-path benchmark, in one run on loopback: no proxy ("direct"), a bare proxy-chain server,
 * and mcp-egress-proxy (events written to a file, as in production). Each proxy runs in its own
 * process (bench/proxy-process.ts); the load generator and the upstream run here.
 *
 *   S1  plain-HTTP keep-alive requests/s and p99 latency, 50 connections
 *   S2  CONNECT tunnels set up per second and p99 (new connection each: CONNECT, GET, close), 50 at once;
 *       4,000 tunnels measured after 2,000 unmeasured ones (JIT warm-up, as S1's first half second)
 *   S3  single-tunnel throughput (MiB/s downloading through one tunnel)
 *   S4  8-tunnel throughput (aggregate)
 *   S5  RSS per idle open tunnel (2,000 tunnels)
 *
 * `egress-redis` is mcp-egress-proxy with `state.store: redis` (a redis-server on loopback, started
 * here when the machine has one). S1's requests carry `x-mcp-tool`, so they need no state (no
 * Redis round trip); S2's CONNECTs carry no attribution header, so each looks up the client's
 * registered calls: one Redis round trip per tunnel. The added latency is read from the two.
 *
 * `--profile` writes a CPU profile of the proxy during S1 and prints its top functions.
 */
import { fork, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { createServer } from 'node:http';
import { connect, createServer as createNetServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createState } from '../src/state/create-state.js';
import type { State } from '../src/state/create-state.js';
import { historyKey } from '../src/state/types.js';
import { median, summarize, table } from './stats.js';

const HOST = '127.0.0.1';
const S1_SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const S2_WARMUP = 2000;
const BULK_BYTES = 256 * 1024 * 1024;
const IDLE_TUNNELS = 2000;

interface Target {
  name: string;
  port: number | null;
  child: ChildProcess | null;
}

type ProxyKind = 'egress' | 'egress-redis' | 'egress-events' | 'proxy-chain' | 'minimal';

function startProxyProcess(
  kind: ProxyKind,
  profileDir?: string,
  env: Record<string, string> = {},
): Promise<Target & { child: ChildProcess; admin: number | null }> {
  return new Promise((resolve, reject) => {
    const child = fork(new URL('./proxy-process.js', import.meta.url), [kind], {
      execArgv: profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : ['--expose-gc'],
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
      env: { ...process.env, ...env },
    });
    child.once('message', (m: { port: number; admin?: number | null }) =>
      resolve({ name: kind, port: m.port, child, admin: m.admin ?? null }),
    );
    child.once('error', reject);
  });
}

function stopProcess(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

/** User + system CPU time of a process so far, in milliseconds (Linux /proc, 100 ticks/s). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

function rssKiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
}

/** A keep-alive HTTP client over one socket: sends a request, waits for one full response. */
function requester(port: number, request: string): { send(): Promise<number>; close(): void } {
  const socket = connect({ host: HOST, port, noDelay: true });
  let buffer = Buffer.alloc(0);
  let waiting: ((ms: number) => void) | null = null;
  let started = 0;
  socket.on('data', (chunk) => {
    buffer = Buffer.concat([buffer, chunk]);
    const end = buffer.indexOf('\r\n\r\n');
    if (end === -1) return;
    const length = Number(/content-length: (\d+)/i.exec(buffer.subarray(0, end).toString('latin1'))?.[1] ?? 0);
    if (buffer.length < end + 4 + length) return;
    buffer = buffer.subarray(end + 4 + length);
    const done = waiting;
    waiting = null;
    done?.(performance.now() - started);
  });
  socket.on('error', () => {});
  return {
    send() {
      return new Promise((resolve) => {
        waiting = resolve;
        started = performance.now();
        socket.write(request);
      });
    },
    close: () => socket.destroy(),
  };
}

/** `toolHeader` false: no attribution header, so each request looks up the client's registered calls. */
async function s1(
  port: number,
  upstreamPort: number,
  proxied: boolean,
  toolHeader = true,
): Promise<{ rps: number; p50: number; p99: number; total: number; tailMs: number; maxMs: number }> {
  const path = proxied ? `http://${HOST}:${upstreamPort}/` : '/';
  const request = `GET ${path} HTTP/1.1\r\nHost: ${HOST}:${upstreamPort}\r\n${toolHeader ? 'x-mcp-tool: bench\r\n' : ''}\r\n`;
  const clients = Array.from({ length: 50 }, () => requester(port, request));
  const latencies: number[] = [];
  const deadline = performance.now() + S1_SECONDS * 1000;
  const warmup = performance.now() + 500;
  const started = performance.now();
  let counted = 0;
  let total = 0;
  await Promise.all(
    clients.map(async (c) => {
      while (performance.now() < deadline) {
        const ms = await c.send();
        total++;
        if (performance.now() > warmup) {
          latencies.push(ms);
          counted++;
        }
      }
    }),
  );
  clients.forEach((c) => c.close());
  // The rate counts the wait for the requests still out at the deadline: a request stalled for
  // seconds lowers it although p99 does not show it (fewer than 1% of requests); `tailMs` says so.
  const tailMs = performance.now() - deadline;
  const seconds = (performance.now() - Math.max(started, warmup)) / 1000;
  const summary = summarize(latencies);
  return { rps: counted / seconds, p50: summary.median, p99: summary.p99, total, tailMs, maxMs: Math.max(0, ...latencies) };
}

/** One tunnel (or direct connection): connect, CONNECT, GET, close. Resolves with its latency. */
function oneTunnel(port: number, upstreamPort: number, proxied: boolean): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const socket = connect({ host: HOST, port, noDelay: true });
    let stage: 'connect' | 'response' = proxied ? 'connect' : 'response';
    let data = '';
    socket.on('connect', () => {
      socket.write(
        proxied
          ? `CONNECT ${HOST}:${upstreamPort} HTTP/1.1\r\nHost: ${HOST}:${upstreamPort}\r\n\r\n`
          : `GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
      );
    });
    socket.on('data', (d) => {
      data += d.toString('latin1');
      if (stage === 'connect' && data.includes('\r\n\r\n')) {
        if (!data.startsWith('HTTP/1.1 200')) return reject(new Error(data));
        stage = 'response';
        data = '';
        socket.write(`GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      }
    });
    socket.on('close', () => resolve(performance.now() - started));
    socket.on('error', reject);
  });
}

async function s2(
  port: number,
  upstreamPort: number,
  proxied: boolean,
  total = 4000,
): Promise<{ perSecond: number; p50: number; p99: number; total: number }> {
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: 50 }, async () => {
      while (next++ < total) latencies.push(await oneTunnel(port, upstreamPort, proxied));
    }),
  );
  const summary = summarize(latencies);
  return { perSecond: total / ((performance.now() - started) / 1000), p50: summary.median, p99: summary.p99, total };
}

interface DecisionReads {
  /** A call without attribution headers: the client's open calls (RedisCallStore.open, one HGETALL). */
  open: number;
  /** `trust: registered` with sequence rules, as before: the registration (HGET), then its session's history (a script). */
  inTurn: number;
  /** The same in one script (RedisHistoryStore.readWithRegistrations), as the data path now reads it. */
  combined: number;
}

/**
 * The p50 of the reads a decision waits on, each in a row of 2,000 after 200 unmeasured, the
 * three kinds alternating so that a noisy neighbour weighs on each alike. The session's history
 * holds 20 calls (a `read_file` among them), as a sequence rule would see it.
 */
async function decisionReadMs(url: string): Promise<DecisionReads> {
  const state = await createState({ store: 'redis', redisUrl: url, keyPrefix: 'bench-read:', timeoutMs: 1000 }, { defaultTtlMs: 60_000 });
  while (!state.up) await new Promise((r) => setTimeout(r, 10));
  const history = state.history as NonNullable<State['history']>;
  history.setRetention(600);
  const client = '127.0.0.1';
  await state.calls.register({ callId: 'c1', tool: 'bench', client, sessionId: 'agent-1' });
  for (let i = 0; i < 20; i++)
    history.record({
      at: Date.now(),
      tool: i === 0 ? 'read_file' : 'bench',
      callId: `h${i}`,
      server: client,
      sessionId: 'agent-1',
      host: null,
      address: null,
      dispatched: null,
    });
  while (state.queuedWrites > 0) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 100));
  const query = { client, callId: 'c1', fallbackKey: historyKey(null, client) };
  const reads: Record<keyof DecisionReads, () => unknown> = {
    open: () => state.calls.open(client),
    inTurn: async () => {
      const call = await state.calls.find(client, 'c1');
      return history.read(historyKey(call?.sessionId ?? null, client), Date.now());
    },
    combined: async () => {
      const found = await history.readWithRegistrations?.(state.calls, query, Date.now());
      if (found?.histories[0]?.length !== 20) throw new Error('the combined read did not find the history');
    },
  };
  const times: Record<keyof DecisionReads, number[]> = { open: [], inTurn: [], combined: [] };
  for (let i = 0; i < 2200; i++) {
    for (const kind of Object.keys(reads) as Array<keyof DecisionReads>) {
      const t0 = performance.now();
      await reads[kind]();
      if (i >= 200) times[kind].push(performance.now() - t0);
    }
  }
  await state.close();
  return { open: summarize(times.open).median, inTurn: summarize(times.inTurn).median, combined: summarize(times.combined).median };
}

/**
 * A redis-server on a free loopback port for `egress-redis` (nothing saved), or null when the
 * machine has none; with the p50 of a bare PING round trip for reference.
 */
async function startBenchRedis(): Promise<{ url: string; roundTripMs: number; stop(): Promise<void> } | null> {
  const probe = new Promise<boolean>((resolve) => {
    const p = spawn('redis-server', ['--version'], { stdio: 'ignore' });
    p.on('error', () => resolve(false));
    p.on('exit', (code) => resolve(code === 0));
  });
  if (!(await probe)) return null;
  const free = createNetServer();
  await new Promise<void>((r) => free.listen(0, HOST, () => r()));
  const port = (free.address() as AddressInfo).port;
  await new Promise((r) => free.close(r));
  const dir = await mkdtemp(join(tmpdir(), 'mep-bench-redis-'));
  const child = spawn('redis-server', ['--bind', HOST, '--port', String(port), '--save', '', '--appendonly', 'no', '--dir', dir], {
    stdio: 'ignore',
  });
  const ping = (): Promise<number> =>
    new Promise((resolve, reject) => {
      const socket = connect({ host: HOST, port, noDelay: true });
      const times: number[] = [];
      let sent = 0;
      const send = () => {
        sent = performance.now();
        socket.write('PING\r\n');
      };
      socket.on('connect', send);
      socket.on('data', () => {
        times.push(performance.now() - sent);
        if (times.length < 2000) send();
        else {
          socket.destroy();
          resolve(summarize(times.slice(200)).median);
        }
      });
      socket.on('error', reject);
    });
  for (let i = 0; ; i++) {
    try {
      const roundTripMs = await ping();
      return {
        url: `redis://${HOST}:${port}/0`,
        roundTripMs,
        stop: () =>
          new Promise((resolve) => {
            child.once('exit', () => resolve());
            child.kill('SIGTERM');
          }),
      };
    } catch (err) {
      if (i > 100) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** Downloads `bytes` through `count` tunnels at once from the bulk server; MiB/s aggregate. */
async function bulk(port: number, bulkPort: number, proxied: boolean, count: number, bytes: number): Promise<number> {
  const started = performance.now();
  await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<void>((resolve, reject) => {
          const socket = connect({ host: HOST, port: proxied ? port : bulkPort });
          let received = 0;
          let tunnelled = !proxied;
          socket.on('connect', () => {
            if (proxied) socket.write(`CONNECT ${HOST}:${bulkPort} HTTP/1.1\r\nHost: x\r\n\r\n`);
            else socket.write(`${bytes}\n`);
          });
          socket.on('data', (d: Buffer) => {
            if (!tunnelled) {
              const end = d.indexOf('\r\n\r\n');
              if (end === -1) return;
              tunnelled = true;
              socket.write(`${bytes}\n`);
              d = d.subarray(end + 4);
            }
            received += d.length;
            if (received >= bytes) socket.destroy();
          });
          socket.on('close', () => (received >= bytes ? resolve() : reject(new Error(`short read ${received}`))));
          socket.on('error', () => {});
        }),
    ),
  );
  return (count * bytes) / (1024 * 1024) / ((performance.now() - started) / 1000);
}

/** Opens `count` idle tunnels through the proxy to the hold server. */
async function openTunnels(port: number, holdPort: number, count: number): Promise<Socket[]> {
  const sockets: Socket[] = [];
  for (let i = 0; i < count; i += 100) {
    await Promise.all(
      Array.from(
        { length: 100 },
        () =>
          new Promise<void>((resolve, reject) => {
            const s = connect({ host: HOST, port });
            s.once('connect', () => s.write(`CONNECT ${HOST}:${holdPort} HTTP/1.1\r\nHost: x\r\n\r\n`));
            s.once('data', (d) => (d.toString().startsWith('HTTP/1.1 200') ? resolve() : reject(new Error(d.toString()))));
            s.on('error', reject);
            sockets.push(s);
          }),
      ),
    );
  }
  return sockets;
}

/**
 * RSS per idle tunnel, in a fresh proxy process: warm up with 200 tunnels (opened and closed),
 * then compare RSS before and after opening 2,000 that stay open.
 */
async function s5(kind: 'egress' | 'proxy-chain' | 'minimal', holdPort: number): Promise<number> {
  const target = await startProxyProcess(kind);
  const port = target.port as number;
  const pid = target.child.pid as number;
  const settle = async () => {
    await new Promise((r) => setTimeout(r, 500));
    const done = new Promise((r) => target.child.once('message', r));
    target.child.send('gc');
    await done;
    await new Promise((r) => setTimeout(r, 200));
  };
  (await openTunnels(port, holdPort, 200)).forEach((s) => s.destroy());
  await settle();
  const before = rssKiB(pid);
  const sockets = await openTunnels(port, holdPort, IDLE_TUNNELS);
  await settle();
  const after = rssKiB(pid);
  sockets.forEach((s) => s.destroy());
  await stopProcess(target.child);
  return ((after - before) * 1024) / IDLE_TUNNELS;
}

export function topFunctions(dir: string): string {
  const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
  if (!file) return '(no profile written)';
  const profile = JSON.parse(readFileSync(join(dir, file), 'utf8')) as {
    nodes: Array<{ id: number; children?: number[]; callFrame: { functionName: string; url: string; lineNumber: number } }>;
    samples: number[];
    timeDeltas: number[];
  };
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  // Inclusive shares: a sample counts for an area when any frame of its stack is in it.
  const areas: Array<[string, RegExp]> = [
    ['policy evaluation, baseline, addresses, DNS cache', /dist\/src\/(policy\/|decide\/|net\/(baseline|address|resolve)\.js)/],
    ['event lines (formatting, writing, the console feed)', /dist\/src\/events\//],
    ['session history (memory store, src/proxy/call-history)', /dist\/src\/(state\/history|proxy\/call-history)\.js/],
    ['attribution and identity', /dist\/src\/attribution\//],
    ['metrics (prom-client)', /dist\/src\/admin\/metrics\.js/],
    ['shared state (@redis/client, src/state/redis)', /node_modules\/@redis\/|dist\/src\/state\/redis\//],
  ];
  const inArea = new Array<number>(areas.length).fill(0);
  const self = new Map<string, number>();
  let total = 0;
  let idle = 0;
  profile.samples.forEach((id, i) => {
    const n = byId.get(id);
    const dt = profile.timeDeltas[i] ?? 0;
    total += dt;
    if (!n) return;
    if (n.callFrame.functionName === '(idle)') idle += dt;
    const where = n.callFrame.url ? `${n.callFrame.url.replace(/^.*\/(node_modules\/|dist\/)?/, '$1')}:${n.callFrame.lineNumber + 1}` : '';
    const key = `${n.callFrame.functionName || '(anonymous)'} ${where}`.trim();
    self.set(key, (self.get(key) ?? 0) + dt);
    const hit = new Array<boolean>(areas.length).fill(false);
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const url = byId.get(cur)?.callFrame.url ?? '';
      areas.forEach(([, re], k) => {
        if (re.test(url)) hit[k] = true;
      });
    }
    hit.forEach((h, k) => {
      if (h) inArea[k] = (inArea[k] ?? 0) + dt;
    });
  });
  const busy = total - idle;
  const rows = [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 15)
    .map(([k, v]) => [`${((100 * v) / total).toFixed(1)}%`, k]);
  return [
    `CPU profile of mcp-egress-proxy (${process.env.BENCH_PROFILE_KIND === 'egress-redis' ? 'egress-redis' : 'egress'}) during S1 (${file}), self time:`,
    '',
    table(['self', 'function'], rows),
    '',
    'Inclusive share of the busy (non-idle) samples:',
    '',
    table(
      ['area', 'share'],
      areas.map(([name], k) => [name, `${((100 * (inArea[k] ?? 0)) / busy).toFixed(1)}%`]),
    ),
  ].join('\n');
}

/** A console tab's stream: GET /v1/events read as fast as it comes, counting decision frames. */
async function readEvents(adminPort: number): Promise<{ stop(expected: number): string }> {
  const socket = connect({ host: HOST, port: adminPort });
  let frames = 0;
  let dropped = 0;
  let tail = '';
  const mark = 'event: decision';
  socket.on('data', (d: Buffer) => {
    const chunk = d.toString('latin1');
    const text = tail + chunk;
    frames += text.split(mark).length - 1;
    for (const m of chunk.matchAll(/"dropped":(\d+)/g)) dropped += Number(m[1]);
    // Keep only what could be the start of a mark not yet counted.
    const last = text.lastIndexOf(mark);
    tail = text.slice(Math.max(last === -1 ? 0 : last + mark.length, text.length - (mark.length - 1)));
  });
  socket.on('error', () => {});
  socket.write(`GET /v1/events HTTP/1.1\r\nHost: ${HOST}:${adminPort}\r\n\r\n`);
  await new Promise((r) => setTimeout(r, 100));
  return {
    stop(expected) {
      socket.destroy();
      return `feed reader: ${frames} decision frames received of about ${expected} decisions, ${dropped} reported dropped`;
    },
  };
}

export async function runDatapathBench(): Promise<string> {
  const profile = process.argv.includes('--profile');
  const body = Buffer.from('{"ok":true}');
  const upstream = createServer({ keepAliveTimeout: 60_000 }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
    res.end(body);
  });
  await new Promise<void>((r) => upstream.listen(0, HOST, () => r()));
  const upstreamPort = (upstream.address() as AddressInfo).port;
  // Bulk: reads a byte count, then streams that many bytes.
  const chunk = Buffer.alloc(64 * 1024, 120);
  const bulkServer = createNetServer((s) => {
    s.on('error', () => {});
    s.once('data', (d) => {
      let left = Number(d.toString().trim());
      const pump = () => {
        while (left > 0) {
          const n = Math.min(left, chunk.length);
          left -= n;
          if (!s.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return void s.once('drain', pump);
        }
      };
      pump();
    });
  });
  await new Promise<void>((r) => bulkServer.listen(0, HOST, () => r()));
  const bulkPort = (bulkServer.address() as AddressInfo).port;
  const holdServer = createNetServer((s) => s.on('error', () => {}));
  await new Promise<void>((r) => holdServer.listen(0, HOST, () => r()));
  const holdPort = (holdServer.address() as AddressInfo).port;

  const rounds = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3));
  const redis = await startBenchRedis();
  const allKinds = ['direct', 'proxy-chain', 'minimal', 'egress', 'egress-redis', 'egress-events'] as const;
  // BENCH_KINDS (or BENCH_TARGETS) = egress,egress-redis or egress,egress-events runs only those (the rows compared).
  const only = (process.env.BENCH_KINDS ?? process.env.BENCH_TARGETS)?.split(',');
  const kinds = allKinds.filter((k) => (k !== 'egress-redis' || redis !== null) && (!only || only.includes(k)));
  type Kind = (typeof allKinds)[number];
  const redisEnv: Record<string, string> = redis ? { BENCH_REDIS_URL: redis.url } : {};
  /** egress-events: S1/S2 only (the question is whether a connected feed reader costs the data path anything). */
  const s1s2Only = (k: Kind) => k === 'egress-events';
  const feedNotes: string[] = [];
  interface Round {
    rps: number;
    p99: number;
    /** S1: how long the last requests out at the deadline took to come back, and the slowest request. */
    tailMs: number;
    maxMs: number;
    /** S1 without the tool header: each request looks up the client's registered calls. */
    stateRps: number;
    stateP50: number;
    stateP99: number;
    setupP50: number;
    rpsCpu: number;
    setups: number;
    setupP99: number;
    setupCpu: number;
    /** CPU of this process (load generator and upstream) per tunnel in S2. */
    setupBenchCpu: number;
    single: number;
    eight: number;
  }
  const byKind = new Map<Kind, Round[]>(kinds.map((k) => [k, []]));
  let profileText = '';
  // Rounds interleave the targets (in a rotated order) so that a noisy neighbour on the host
  // weighs on every target alike; the table gives the median of the rounds.
  for (let round = 0; round < rounds; round++) {
    const order = kinds.map((_, i) => kinds[(i + round) % kinds.length] as Kind);
    for (const kind of order) {
      const target: Target & { admin?: number | null } =
        kind === 'direct' ? { name: 'direct', port: null, child: null } : await startProxyProcess(kind, undefined, redisEnv);
      const reader = target.admin ? await readEvents(target.admin) : null;
      const port = target.port ?? upstreamPort;
      const proxied = kind !== 'direct';
      const pid = target.child?.pid;
      const cpu = () => (pid === undefined ? 0 : cpuMs(pid));
      let c0 = cpu();
      const r1 = await s1(port, upstreamPort, proxied);
      // The CPU of S1's own requests (the run without the tool header is not counted in it).
      const rpsCpu = ((cpu() - c0) * 1000) / r1.total;
      const r1State = kind === 'egress' || kind === 'egress-redis' ? await s1(port, upstreamPort, proxied, false) : null;
      // Warm-up first, as S1 has: the JIT compiles the CONNECT path during the first thousands of
      // tunnels, and a short count would measure compilation more than the proxy.
      await s2(proxied ? port : upstreamPort, upstreamPort, proxied, S2_WARMUP);
      c0 = cpu();
      const own0 = process.cpuUsage();
      const r2 = await s2(proxied ? port : upstreamPort, upstreamPort, proxied);
      const setupCpu = ((cpu() - c0) * 1000) / r2.total;
      const own = process.cpuUsage(own0);
      const setupBenchCpu = (own.user + own.system) / r2.total;
      const r3 = s1s2Only(kind) ? NaN : await bulk(port, bulkPort, proxied, 1, BULK_BYTES);
      const r4 = s1s2Only(kind) ? NaN : await bulk(port, bulkPort, proxied, 8, BULK_BYTES / 4);
      if (reader) feedNotes.push(reader.stop(r1.total + r2.total + S2_WARMUP));
      if (target.child) await stopProcess(target.child);
      byKind.get(kind)?.push({
        rps: r1.rps,
        p99: r1.p99,
        tailMs: r1.tailMs,
        maxMs: r1.maxMs,
        stateRps: r1State?.rps ?? NaN,
        stateP50: r1State?.p50 ?? NaN,
        stateP99: r1State?.p99 ?? NaN,
        setupP50: r2.p50,
        rpsCpu,
        setups: r2.perSecond,
        setupP99: r2.p99,
        setupCpu,
        setupBenchCpu,
        single: r3,
        eight: r4,
      });
    }
  }
  const rss = new Map<Kind, number>();
  for (const kind of kinds) if (kind !== 'direct' && kind !== 'egress-redis' && !s1s2Only(kind)) rss.set(kind, await s5(kind, holdPort));
  const readMs = redis ? await decisionReadMs(redis.url) : null;
  if (profile) {
    // BENCH_PROFILE_KIND=egress-redis profiles the proxy with its state in Redis instead.
    const profileDir = await mkdtemp(join(tmpdir(), 'mep-prof-'));
    const target = await startProxyProcess(
      process.env.BENCH_PROFILE_KIND === 'egress-redis' && redis ? 'egress-redis' : 'egress',
      profileDir,
      redisEnv,
    );
    await s1(target.port as number, upstreamPort, true);
    await stopProcess(target.child);
    profileText = topFunctions(profileDir);
  }
  await redis?.stop();
  upstream.close();
  bulkServer.close();
  holdServer.close();

  const med = (kind: Kind, pick: (r: Round) => number) => median((byKind.get(kind) ?? []).map(pick));
  const rows = kinds.map((kind) => {
    const proxied = kind !== 'direct';
    const kib = rss.get(kind);
    return [
      kind,
      med(kind, (r) => r.rps).toFixed(0),
      med(kind, (r) => r.p99).toFixed(2),
      proxied ? med(kind, (r) => r.rpsCpu).toFixed(0) : '-',
      med(kind, (r) => r.setups).toFixed(0),
      med(kind, (r) => r.setupP99).toFixed(2),
      proxied ? med(kind, (r) => r.setupCpu).toFixed(0) : '-',
      med(kind, (r) => r.setupBenchCpu).toFixed(0),
      s1s2Only(kind) ? '-' : med(kind, (r) => r.single).toFixed(0),
      s1s2Only(kind) ? '-' : med(kind, (r) => r.eight).toFixed(0),
      kib === undefined ? '-' : (kib / 1024).toFixed(1),
    ];
  });
  const out = [
    `## Data path (loopback; medians of ${rounds} interleaved rounds; S1 ${S1_SECONDS} s per target and round)`,
    '',
    table(
      [
        'target',
        'S1 req/s',
        'S1 p99 ms',
        'S1 proxy CPU µs/req',
        'S2 tunnels/s',
        'S2 p99 ms',
        'S2 proxy CPU µs/tunnel',
        'S2 load CPU µs/tunnel',
        'S3 MiB/s (1 tunnel)',
        'S4 MiB/s (8 tunnels)',
        'S5 KiB RSS/idle tunnel',
      ],
      rows,
    ),
    '',
    'Proxy CPU: user + system time of the proxy process per request or tunnel (kernel work on loopback included).',
    'Load CPU: the same for the bench process (load generator and upstream), which shares the cores with the proxy.',
    'S5: RSS growth per tunnel with 2,000 idle tunnels open, each reading taken after a full GC in a fresh proxy process.',
    'egress-events: egress with one GET /v1/events stream connected and read throughout (a console tab); S1/S2 only.',
    `S1 stalls (per round: the wait after the deadline for the requests still out / the slowest request, ms): ${kinds
      .map((k) => `${k} ${(byKind.get(k) ?? []).map((r) => `${r.tailMs.toFixed(0)}/${r.maxMs.toFixed(0)}`).join(' ')}`)
      .join('; ')}`,
    ...feedNotes.map((n) => `  ${n}`),
  ];
  const ratioOf = (a: Kind, b: Kind, pick: (r: Round) => number) => {
    const per = Array.from({ length: rounds }, (_, i) => pick(byKind.get(a)?.[i] as Round) / pick(byKind.get(b)?.[i] as Round));
    return `${median(per).toFixed(2)}x (rounds ${Math.min(...per).toFixed(2)}-${Math.max(...per).toFixed(2)})`;
  };
  if (kinds.includes('egress-events') && kinds.includes('egress')) {
    out.push(
      '',
      `egress-events / egress, median of the per-round ratios: S1 ${ratioOf('egress-events', 'egress', (r) => r.rps)}, S2 ${ratioOf('egress-events', 'egress', (r) => r.setups)} (target: within noise, about 1)`,
    );
  }
  const ratio = (pick: (r: Round) => number) => {
    if (!byKind.get('proxy-chain')?.length || !byKind.get('egress')?.length) return 'n/a';
    const per = Array.from(
      { length: rounds },
      (_, i) => pick(byKind.get('egress')?.[i] as Round) / pick(byKind.get('proxy-chain')?.[i] as Round),
    );
    return `${median(per).toFixed(2)}x (rounds ${Math.min(...per).toFixed(2)}-${Math.max(...per).toFixed(2)})`;
  };
  if (kinds.includes('proxy-chain') && kinds.includes('egress'))
    out.push(
      '',
      `egress / proxy-chain, median of the per-round ratios: S1 ${ratio((r) => r.rps)} (target >= 2), S2 ${ratio((r) => r.setups)} (target >= 1.1), ` +
        `S3 ${ratio((r) => r.single)}, S4 ${ratio((r) => r.eight)} (targets >= 1), S5 ${((rss.get('egress') ?? NaN) / 1024).toFixed(1)} KiB (target <= 20)`,
    );
  if (redis && readMs && kinds.includes('egress') && kinds.includes('egress-redis')) {
    const s = (kind: Kind) => [
      kind,
      med(kind, (r) => r.rps).toFixed(0),
      med(kind, (r) => r.stateRps).toFixed(0),
      med(kind, (r) => r.stateP50).toFixed(3),
      med(kind, (r) => r.stateP99).toFixed(2),
      med(kind, (r) => r.setups).toFixed(0),
      med(kind, (r) => r.setupP50).toFixed(3),
      med(kind, (r) => r.setupP99).toFixed(2),
    ];
    const added = (pick: (r: Round) => number) => (med('egress-redis', pick) - med('egress', pick)).toFixed(3);
    out.push(
      '',
      '## State store: memory vs Redis (redis-server on loopback)',
      '',
      table(
        [
          'target',
          'S1 req/s (no state)',
          'S1 req/s (state: no tool header)',
          'its p50 ms',
          'its p99 ms',
          'S2 tunnels/s (state)',
          'S2 p50 ms',
          'S2 p99 ms',
        ],
        [s('egress'), s('egress-redis')],
      ),
      '',
      `Redis's added latency per call that needs state (median, redis - memory): S1 p50 ${added((r) => r.stateP50)} ms, S2 p50 ${added((r) => r.setupP50)} ms; ` +
        `a loopback Redis round trip alone: ${redis.roundTripMs.toFixed(3)} ms (p50 of 2,000 PINGs); the decision's read itself (the store's open(), one HGETALL with its timeout, p50 of 2,000 in a row): ${readMs.open.toFixed(3)} ms. Calls with a tool header need no state: S1 req/s ${med('egress-redis', (r) => r.rps).toFixed(0)} vs ${med('egress', (r) => r.rps).toFixed(0)}.`,
      `trust: registered with sequence rules, the decision's reads (p50 of 2,000, alternating): the registration then its session's history in turn ${readMs.inTurn.toFixed(3)} ms (two round trips, before), in one script ${readMs.combined.toFixed(3)} ms (one round trip, now).`,
    );
  }
  if (profileText) out.push('', profileText);
  return out.join('\n');
}
