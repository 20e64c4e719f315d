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
 * `--profile` writes a CPU profile of the proxy during S1 and prints its top functions.
 */
import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { createServer } from 'node:http';
import { connect, createServer as createNetServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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

function startProxyProcess(kind: 'egress' | 'egress-events' | 'proxy-chain' | 'minimal', profileDir?: string): Promise<Target & { child: ChildProcess; admin: number | null }> {
  return new Promise((resolve, reject) => {
    const child = fork(new URL('./proxy-process.js', import.meta.url), [kind], {
      execArgv: profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : ['--expose-gc'],
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    });
    child.once('message', (m: { port: number; admin?: number | null }) => resolve({ name: kind, port: m.port, child, admin: m.admin ?? null }));
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

async function s1(port: number, upstreamPort: number, proxied: boolean): Promise<{ rps: number; p99: number; total: number }> {
  const path = proxied ? `http://${HOST}:${upstreamPort}/` : '/';
  const request = `GET ${path} HTTP/1.1\r\nHost: ${HOST}:${upstreamPort}\r\nx-mcp-tool: bench\r\n\r\n`;
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
  const seconds = (performance.now() - Math.max(started, warmup)) / 1000;
  return { rps: counted / seconds, p99: summarize(latencies).p99, total };
}

/** One tunnel (or direct connection): connect, CONNECT, GET, close. Resolves with its latency. */
function oneTunnel(port: number, upstreamPort: number, proxied: boolean): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const socket = connect({ host: HOST, port, noDelay: true });
    let stage: 'connect' | 'response' = proxied ? 'connect' : 'response';
    let data = '';
    socket.on('connect', () => {
      socket.write(proxied ? `CONNECT ${HOST}:${upstreamPort} HTTP/1.1\r\nHost: ${HOST}:${upstreamPort}\r\n\r\n` : `GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
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

async function s2(port: number, upstreamPort: number, proxied: boolean, total = 4000): Promise<{ perSecond: number; p99: number; total: number }> {
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: 50 }, async () => {
      while (next++ < total) latencies.push(await oneTunnel(port, upstreamPort, proxied));
    }),
  );
  return { perSecond: total / ((performance.now() - started) / 1000), p99: summarize(latencies).p99, total };
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
    ['policy evaluation, baseline, addresses, DNS cache', /dist\/src\/(policy\/|net\/(baseline|address|resolve)\.js|proxy\/decision\.js)/],
    ['event lines (formatting and writing)', /dist\/src\/proxy\/(events|event-destination)\.js/],
    ['attribution and identity', /dist\/src\/attribution\//],
    ['metrics (prom-client)', /dist\/src\/admin\/metrics\.js/],
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
  const rows = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 15).map(([k, v]) => [`${((100 * v) / total).toFixed(1)}%`, k]);
  return [
    `CPU profile of mcp-egress-proxy during S1 (${file}), self time:`,
    '',
    table(['self', 'function'], rows),
    '',
    'Inclusive share of the busy (non-idle) samples:',
    '',
    table(['area', 'share'], areas.map(([name], k) => [name, `${((100 * (inArea[k] ?? 0)) / busy).toFixed(1)}%`])),
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
  const allKinds = ['direct', 'proxy-chain', 'minimal', 'egress', 'egress-events'] as const;
  type Kind = (typeof allKinds)[number];
  // BENCH_KINDS=egress,egress-events runs only those (the feed's row against its baseline).
  const only = process.env.BENCH_KINDS?.split(',');
  const kinds = allKinds.filter((k) => !only || only.includes(k));
  /** egress-events: S1/S2 only (the question is whether a connected feed reader costs the data path anything). */
  const s1s2Only = (k: Kind) => k === 'egress-events';
  const feedNotes: string[] = [];
  interface Round {
    rps: number;
    p99: number;
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
      const target: Target & { admin?: number | null } = kind === 'direct' ? { name: 'direct', port: null, child: null } : await startProxyProcess(kind);
      const reader = target.admin ? await readEvents(target.admin) : null;
      const port = target.port ?? upstreamPort;
      const proxied = kind !== 'direct';
      const pid = target.child?.pid;
      const cpu = () => (pid === undefined ? 0 : cpuMs(pid));
      let c0 = cpu();
      const r1 = await s1(port, upstreamPort, proxied);
      const rpsCpu = ((cpu() - c0) * 1000) / r1.total;
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
      byKind.get(kind)?.push({ rps: r1.rps, p99: r1.p99, rpsCpu, setups: r2.perSecond, setupP99: r2.p99, setupCpu, setupBenchCpu, single: r3, eight: r4 });
    }
  }
  const rss = new Map<Kind, number>();
  for (const kind of kinds) if (kind !== 'direct' && !s1s2Only(kind)) rss.set(kind, await s5(kind, holdPort));
  if (profile) {
    const profileDir = await mkdtemp(join(tmpdir(), 'mep-prof-'));
    const target = await startProxyProcess('egress', profileDir);
    await s1(target.port as number, upstreamPort, true);
    await stopProcess(target.child);
    profileText = topFunctions(profileDir);
  }
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
    table(['target', 'S1 req/s', 'S1 p99 ms', 'S1 proxy CPU µs/req', 'S2 tunnels/s', 'S2 p99 ms', 'S2 proxy CPU µs/tunnel', 'S2 load CPU µs/tunnel', 'S3 MiB/s (1 tunnel)', 'S4 MiB/s (8 tunnels)', 'S5 KiB RSS/idle tunnel'], rows),
    '',
    'Proxy CPU: user + system time of the proxy process per request or tunnel (kernel work on loopback included).',
    'Load CPU: the same for the bench process (load generator and upstream), which shares the cores with the proxy.',
    'S5: RSS growth per tunnel with 2,000 idle tunnels open, each reading taken after a full GC in a fresh proxy process.',
    'egress-events: egress with one GET /v1/events stream connected and read throughout (a console tab); S1/S2 only.',
    ...feedNotes.map((n) => `  ${n}`),
  ];
  const ratioOf = (a: Kind, b: Kind, pick: (r: Round) => number) => {
    const per = Array.from({ length: rounds }, (_, i) => pick(byKind.get(a)?.[i] as Round) / pick(byKind.get(b)?.[i] as Round));
    return `${median(per).toFixed(2)}x (rounds ${Math.min(...per).toFixed(2)}-${Math.max(...per).toFixed(2)})`;
  };
  if (kinds.includes('egress-events') && kinds.includes('egress')) {
    out.push('', `egress-events / egress, median of the per-round ratios: S1 ${ratioOf('egress-events', 'egress', (r) => r.rps)}, S2 ${ratioOf('egress-events', 'egress', (r) => r.setups)} (target: within noise, about 1)`);
  }
  if (!kinds.includes('proxy-chain') || !kinds.includes('egress')) return [...out, profileText].join('\n');
  const ratio = (pick: (r: Round) => number) => {
    const per = Array.from({ length: rounds }, (_, i) => pick(byKind.get('egress')?.[i] as Round) / pick(byKind.get('proxy-chain')?.[i] as Round));
    return `${median(per).toFixed(2)}x (rounds ${Math.min(...per).toFixed(2)}-${Math.max(...per).toFixed(2)})`;
  };
  out.push(
    '',
    `egress / proxy-chain, median of the per-round ratios: S1 ${ratio((r) => r.rps)} (target >= 2), S2 ${ratio((r) => r.setups)} (target >= 1.1), ` +
      `S3 ${ratio((r) => r.single)}, S4 ${ratio((r) => r.eight)} (targets >= 1), S5 ${((rss.get('egress') ?? NaN) / 1024).toFixed(1)} KiB (target <= 20)`,
  );
  if (profileText) out.push('', profileText);
  return out.join('\n');
}
