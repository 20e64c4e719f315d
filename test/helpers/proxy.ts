/** Starts the real proxy in-process on port 0 with temp config and policy files, capturing its events. */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { startProxy } from '../../src/commands/serve.js';
import type { Running, StartOptions } from '../../src/commands/serve.js';
import { parseProxyConfig } from '../../src/config/proxy-config.js';
import { BatchedDestination } from '../../src/events/event-destination.js';
import { createEventSink, createLogger } from '../../src/events/events.js';
import { startUpstream } from './upstream.js';
import type { TestUpstream } from './upstream.js';

export type Event = Record<string, unknown> & { event?: string; msg?: string };

export interface TestProxy {
  readonly port: number;
  readonly url: string;
  readonly running: Running;
  readonly dir: string;
  readonly policyFile: string;
  events(kind?: string): Event[];
  waitFor(predicate: (e: Event) => boolean, timeoutMs?: number): Promise<Event>;
  /** Resolves with the events of `kind` once there are `count` of them (deferred lines arrive late). */
  waitForCount(kind: string, count: number, timeoutMs?: number): Promise<Event[]>;
  stop(): Promise<void>;
}

export interface TestProxyOptions {
  policy: string;
  /** Extra YAML appended to the generated config (listen, policy, admin and dns are set). */
  config?: string;
  dns?: string;
  /** The proxy's listen address (default 127.0.0.1:0). */
  listen?: string;
  /** Exempt loopback from the baseline (default true: test upstreams live on 127.0.0.1). */
  exemptLoopback?: boolean;
  /** Passed to startProxy (e.g. `history`: another session-history store). */
  start?: StartOptions;
}

export async function startTestProxy(options: TestProxyOptions): Promise<TestProxy> {
  const dir = await mkdtemp(join(tmpdir(), 'mep-proxy-'));
  const policyFile = join(dir, 'policy.yaml');
  await writeFile(policyFile, options.policy);
  const exempt = options.exemptLoopback ?? true;
  const text = [
    `listen: ${options.listen ?? '127.0.0.1:0'}`,
    'policy: policy.yaml',
    /^admin:/m.test(options.config ?? '') ? '' : 'admin: {listen: "off"}',
    `dns: {servers: [${options.dns ? JSON.stringify(options.dns) : ''}], timeout_ms: 1000}`,
    exempt && !/^baseline:/m.test(options.config ?? '') ? 'baseline: {allow_cidrs: [127.0.0.0/8, "::1/128"]}' : '',
    options.config ?? '',
  ].join('\n');
  const configFile = join(dir, 'proxy.yaml');
  await writeFile(configFile, text);
  const parsed = parseProxyConfig(configFile, text);
  if (!parsed.config) throw new Error(parsed.diagnostics.map((d) => d.message).join('; '));
  const lines: Event[] = [];
  const waiters: Array<{ predicate: (e: Event) => boolean; resolve: (e: Event) => void }> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line.trim()) continue;
        const e = JSON.parse(line) as Event;
        lines.push(e);
        for (const w of [...waiters]) {
          if (w.predicate(e)) {
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve(e);
          }
        }
      }
      cb();
    },
  });
  // Batched as in production, so the tests see lines when an operator would.
  const destination = new BatchedDestination(sink);
  const events = createEventSink(createLogger('debug', destination));
  const running = await startProxy(parsed.config, events, options.start);
  if (!running) throw new Error(`policy rejected: ${JSON.stringify(lines)}`);
  const port = (running.proxy.address as { port: number }).port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    running,
    dir,
    policyFile,
    events: (kind) => (kind ? lines.filter((e) => e.event === kind) : [...lines]),
    waitFor: (predicate, timeoutMs = 5000) => {
      const found = lines.find(predicate);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('timed out waiting for an event')), timeoutMs);
        waiters.push({ predicate, resolve: (e) => (clearTimeout(timer), resolve(e)) });
      });
    },
    waitForCount: async (kind, count, timeoutMs = 5000) => {
      const deadline = Date.now() + timeoutMs;
      while (lines.filter((e) => e.event === kind).length < count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      return lines.filter((e) => e.event === kind);
    },
    // close(): written out, and no longer held for the exit flush (tests start many proxies).
    stop: () => running.stop().then(() => destination.close()),
  };
}

/** A test proxy and one loopback upstream, both stopped when `t` ends. */
export async function proxyWithUpstream(
  t: { teardown(fn: () => Promise<void>): void },
  options: TestProxyOptions,
): Promise<{ proxy: TestProxy; upstream: TestUpstream; target: string }> {
  const upstream = await startUpstream();
  const proxy = await startTestProxy(options);
  t.teardown(async () => {
    await proxy.stop();
    await upstream.close();
  });
  return { proxy, upstream, target: `127.0.0.1:${upstream.port}` };
}

/** startTestProxy, stopped when the test `t` ends. */
export async function startTestProxyFor(t: { teardown(fn: () => unknown): void }, options: TestProxyOptions): Promise<TestProxy> {
  const proxy = await startTestProxy(options);
  t.teardown(() => proxy.stop());
  return proxy;
}
