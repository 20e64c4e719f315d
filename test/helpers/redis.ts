/**
 * A real `redis-server` (Debian's package) for the tests: on a free loopback port inside the
 * test namespace, nothing saved to disk, killed at teardown. Never the system's service.
 * Also a TCP relay that delays Redis's answers (a slow Redis) and a one-shot RESP client.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { TLS } from './upstream.js';

const CERT_PATH = new URL('../fixtures/server.pem', import.meta.url).pathname;
const KEY_PATH = new URL('../fixtures/server.key', import.meta.url).pathname;

export interface TestRedis {
  readonly port: number;
  /** `redis://127.0.0.1:PORT/0` (`rediss://` with TLS), without the password. */
  readonly url: string;
  /** Sends one command and resolves with the raw RESP answer. */
  command(...args: string[]): Promise<string>;
  /** Stops it (SIGKILL: nothing is flushed, as when a host dies). */
  stop(): Promise<void>;
  /** Starts it again on the same port (empty: nothing was saved). */
  restart(): Promise<void>;
}

export interface TestRedisOptions {
  readonly password?: string;
  /** Serve TLS only (the test fixtures' certificate for 127.0.0.1). */
  readonly tls?: boolean;
}

export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Starts redis-server, stopped when `t` ends. */
export async function startRedis(t: { teardown(fn: () => unknown): void }, options: TestRedisOptions = {}): Promise<TestRedis> {
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), 'mep-redis-'));
  const args = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no', '--loglevel', 'warning'];
  if (options.tls)
    args.push(
      '--port',
      '0',
      '--tls-port',
      String(port),
      '--tls-cert-file',
      CERT_PATH,
      '--tls-key-file',
      KEY_PATH,
      '--tls-auth-clients',
      'no',
    );
  else args.push('--port', String(port));
  if (options.password) args.push('--requirepass', options.password);
  let child: ChildProcess | null = null;
  const command = (...cmd: string[]) =>
    respCommand(port, options.tls === true, options.password ? [['AUTH', options.password], cmd] : [cmd]);
  const start = async () => {
    const c = spawn('redis-server', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    child = c;
    let err = '';
    c.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    const deadline = Date.now() + 5000;
    for (;;) {
      try {
        if ((await command('PING')).includes('PONG')) return;
      } catch {
        // not yet listening
      }
      if (c.exitCode !== null || Date.now() > deadline) throw new Error(`redis-server did not start: ${err}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const stop = async () => {
    const c = child;
    child = null;
    if (!c || c.exitCode !== null) return;
    const exited = new Promise((resolve) => c.once('exit', resolve));
    c.kill('SIGKILL');
    await exited;
  };
  await start();
  t.teardown(stop);
  return { port, url: `${options.tls ? 'rediss' : 'redis'}://127.0.0.1:${port}/0`, command, stop, restart: start };
}

/** Sends commands on one connection; resolves with everything Redis answered to the last. */
function respCommand(port: number, tls: boolean, commands: string[][]): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket: Socket = tls ? tlsConnect({ port, host: '127.0.0.1', ca: TLS.ca }) : createConnection({ port, host: '127.0.0.1' });
    let data = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('no answer from redis'));
    }, 2000);
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on(tls ? 'secureConnect' : 'connect', () => {
      socket.write(commands.map((c) => `*${c.length}\r\n${c.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`).join(''));
    });
    socket.on('data', (d: Buffer) => {
      data += d.toString();
      // One answer line (or more) per command: done when every command has had its first line.
      if (data.split('\r\n').filter((l) => /^[+\-:$*]/.test(l)).length >= commands.length) {
        setTimeout(() => {
          clearTimeout(timer);
          socket.destroy();
          resolve(data);
        }, 20);
      }
    });
  });
}

export interface DelayingRelay {
  readonly port: number;
  /** Delays each chunk from Redis to the client by this many ms (0: none). */
  delayMs: number;
  close(): Promise<void>;
}

/** A TCP relay in front of Redis whose answers can be made late (a slow Redis). */
export async function delayingRelay(t: { teardown(fn: () => unknown): void }, targetPort: number): Promise<DelayingRelay> {
  const sockets = new Set<Socket>();
  const relay: DelayingRelay = {
    port: 0,
    delayMs: 0,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  const server: Server = createServer((client) => {
    const upstream = createConnection({ port: targetPort, host: '127.0.0.1' });
    sockets.add(client).add(upstream);
    client.on('data', (d) => upstream.write(d));
    // In order even when the delay changes: a chunk never overtakes one delayed before it.
    let releaseAt = 0;
    upstream.on('data', (d) => {
      releaseAt = Math.max(Date.now() + relay.delayMs, releaseAt);
      const wait = releaseAt - Date.now();
      if (wait > 0) setTimeout(() => client.writable && client.write(d), wait);
      else client.write(d);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  (relay as { port: number }).port = (server.address() as { port: number }).port;
  t.teardown(() => relay.close());
  return relay;
}

export interface RedisMonitor {
  /** Every command Redis executed since the monitor started (or since `mark`), each as its words. */
  since(): string[][];
  /** Forgets what was seen so far. */
  mark(): void;
}

/**
 * Redis's own list of the commands it executes (MONITOR), to count what the proxy sends: a
 * script's own commands are left out, only the EVALSHA that ran it is listed.
 */
export async function monitorRedis(t: { teardown(fn: () => unknown): void }, port: number): Promise<RedisMonitor> {
  const socket = createConnection({ port, host: '127.0.0.1' });
  t.teardown(() => socket.destroy());
  let seen: string[][] = [];
  let partial = '';
  let ok: () => void = () => {};
  const started = new Promise<void>((resolve) => (ok = resolve));
  socket.on('data', (d: Buffer) => {
    const lines = (partial + d.toString('latin1')).split('\r\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      if (line === '+OK') ok();
      // +1733000000.123456 [0 127.0.0.1:40000] "evalsha" "..." ...; a script's own commands say [0 lua].
      else if (line.startsWith('+') && !/^\+[\d.]+ \[\d+ lua\]/.test(line))
        seen.push([...line.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1] as string));
    }
  });
  socket.on('error', () => {});
  socket.write('MONITOR\r\n');
  await started;
  return {
    since: () => seen,
    mark: () => (seen = []),
  };
}

/** The lethal-trifecta rule the replica tests share: no `fetch` within ten minutes after a `read_*` call. */
export const FETCH_AFTER_READ_POLICY = `version: 1
default_verdict: allow
rules:
  - id: no-fetch-after-read
    priority: 1
    verdict: deny
    tool_name_glob: fetch
    after: {tool_name_glob: "read_*", within_seconds: 600}
`;
