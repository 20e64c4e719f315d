/**
 * `serve`: wires configuration, policy, resolver, registry, event log and listeners together,
 * and owns the process's signals. Fails closed: no valid config or no valid policy at start
 * means no listener at all.
 *
 * Over 300 lines because it is the one place the process is assembled (state, policy, watcher,
 * proxy, admin, feed, signals, shutdown order); each piece lives in its own module.
 */
import type { Server } from 'node:net';
import { loadProxyConfig, parseListen } from '../config/proxy-config.js';
import { isLoopbackHost } from '../net/address.js';
import { reportAcceptErrors } from '../net/accept.js';
import type { ListenAddress, ProxyConfig } from '../config/proxy-config.js';
import { formatDiagnostic } from '../config/yaml.js';
import { metadataOverlaps } from '../net/baseline.js';
import { createResolver } from '../net/resolve.js';
import { canonicalListeners, createSelfCheck } from '../net/self.js';
import { createState } from '../state/create-state.js';
import type { State } from '../state/create-state.js';
import { withClientCopies } from '../state/client-copies.js';
import { MemoryHistoryStore } from '../state/history.js';
import type { CallStore, DiscoveredLog, HistoryStore } from '../state/types.js';
import { createEventSink, createLogger } from '../events/events.js';
import type { EventSink } from '../events/events.js';
import { PolicyStore } from '../live/policy-store.js';
import type { LoadAttempt } from '../live/policy-store.js';
import { PolicyWatcher } from '../live/policy-watch.js';
import { PolicyWriter } from '../live/policy-writer.js';
import { DecisionFeed } from '../events/decision-feed.js';
import { AdminServer } from '../admin/server.js';
import { Metrics } from '../admin/metrics.js';
import { ProxyServer } from '../proxy/server.js';
import type { CommandIO } from './io.js';
import { holdSignals } from './held-signals.js';
import { keepOldGenerationHeadroom } from './old-generation.js';
import { capYoungGeneration } from './young-generation.js';

export interface ServeOptions {
  readonly config?: string;
  readonly listen?: string;
  readonly adminListen?: string;
}

/** The running proxy, for the admin API and for tests that run it in-process. */
export interface Running {
  readonly config: ProxyConfig;
  readonly proxy: ProxyServer;
  readonly store: PolicyStore;
  /** Where registrations, history and discovered destinations live (`state.store`). */
  readonly state: State;
  readonly registry: CallStore;
  readonly discovered: DiscoveredLog;
  /** Session history: what sequence clauses (`after`) read; kept for the serving policy's longest window. */
  readonly history: HistoryStore;
  readonly events: EventSink;
  readonly metrics: Metrics;
  /** The recent decisions and the live streams of them (GET /v1/events, replay). */
  readonly feed: DecisionFeed;
  /** Writes the policy file for the admin API's edit routes. */
  readonly policyWriter: PolicyWriter;
  readonly admin: AdminServer | null;
  reload(trigger: string): Promise<boolean>;
  stop(): Promise<void>;
}

/**
 * For loads nobody waits for (the watcher's, a SIGHUP's): the event line of their read could not
 * be written (the log's disk is full, say). The policy itself was loaded or rejected all the
 * same, so this must not end the process as an unhandled rejection would.
 */
function reportLost(err: unknown): boolean {
  process.stderr.write(`error: a policy reload's event could not be written: ${err instanceof Error ? err.message : String(err)}\n`);
  return false;
}

function applyOverrides(config: ProxyConfig, opts: ServeOptions, io: CommandIO): ProxyConfig | null {
  let listen = config.listen;
  let adminListen: ListenAddress | null = config.admin.listen;
  if (opts.listen) {
    const parsed = parseListen(opts.listen);
    if ('error' in parsed) {
      io.err(`error: --listen: ${parsed.error}\n`);
      return null;
    }
    listen = parsed;
  }
  if (opts.adminListen) {
    if (opts.adminListen === 'off') adminListen = null;
    else {
      const parsed = parseListen(opts.adminListen);
      if ('error' in parsed) {
        io.err(`error: --admin-listen: ${parsed.error}\n`);
        return null;
      }
      adminListen = parsed;
      if (config.admin.tokens.length === 0 && !isLoopbackHost(parsed.host)) {
        io.err(`error: --admin-listen: ${parsed.host} is not a loopback address, and no admin.tokens are configured\n`);
        return null;
      }
    }
  }
  return { ...config, listen, admin: { ...config.admin, listen: adminListen } };
}

export interface StartOptions {
  /** Watch the policy file for changes (default true). */
  readonly watch?: boolean;
  /** Extra CA certificate for a `rediss://` state store (tests). */
  readonly stateTlsCa?: string;
  /** The session-history store (default: the state store's: in memory bounded by `limits.max_history_calls`, or Redis). */
  readonly history?: HistoryStore;
}

export async function startProxy(config: ProxyConfig, events: EventSink, options: StartOptions = {}): Promise<Running | null> {
  const metrics = new Metrics();
  const state = await createState(config.state, {
    defaultTtlMs: config.attribution.defaultTtlMs,
    maxTotal: config.limits.maxRegisteredCalls,
    env: process.env,
    tlsCa: options.stateTlsCa,
    onHealth: (up) => {
      metrics.stateUp.set(up ? 1 : 0);
      if (up) events.info({ event: 'state.up', store: config.state.store }, 'state store connected');
      else
        events.warn(
          { event: 'state.down', store: config.state.store },
          'state store unavailable: calls that need state are refused (state_unavailable)',
        );
    },
    onDropped: (reason) => metrics.stateWritesDropped.inc({ reason }),
    onRetried: () => metrics.stateWritesRetried.inc(),
    warn: (fields, msg) => events.warn(fields, msg),
    memoryHistory: options.history ? undefined : () => new MemoryHistoryStore({ maxCalls: config.limits.maxHistoryCalls }),
  });
  // A start that fails closes the state store again: an open Redis connection would keep the
  // process alive after `serve` has returned its exit code.
  try {
    const running = await assemble(config, events, options, metrics, state);
    if (!running) await state.close();
    return running;
  } catch (err) {
    await state.close();
    throw err;
  }
}

/** Everything but the state store, which `startProxy` opens first and closes if this fails. */
async function assemble(
  config: ProxyConfig,
  events: EventSink,
  options: StartOptions,
  metrics: Metrics,
  state: State,
): Promise<Running | null> {
  metrics.stateUp.set(state.up ? 1 : 0);
  metrics.stateQueued = () => state.queuedWrites;
  events.info(
    {
      event: 'state.store',
      store: state.store,
      target: state.description,
      key_prefix: config.state.store === 'redis' ? config.state.keyPrefix : null,
      timeout_ms: config.state.timeoutMs,
    },
    `state store: ${state.description}`,
  );
  const memory = state.history instanceof MemoryHistoryStore ? state.history : null;
  // store: redis gives the shared RedisHistoryStore; memory the bounded one in this process.
  // Session-less connections of a server see what it did in its sessions (state/client-copies.ts).
  const history: HistoryStore = withClientCopies(options.history ?? (state.history as HistoryStore));
  // Each read of the file is logged once, by the first of those who asked for it: a generation
  // is announced even when a read asked for meanwhile finds nothing new.
  let watcher: PolicyWatcher | null = null;
  const logLoad = (result: LoadAttempt) => {
    const { trigger } = result;
    // Bytes this process has read need no second read when the watcher sees them; bytes it
    // could not read (null) are read again at the next event or poll.
    watcher?.expect(result.bytesSha256);
    if (result.ok) {
      const g = result.generation;
      // Before any call can be decided under the new generation: history kept for its longest window.
      history.setRetention(g.policy.maxAfterSeconds);
      metrics.reloads.inc({ result: result.changed ? 'loaded' : 'unchanged', trigger });
      metrics.generation.set(g.generation);
      metrics.policyError.set(0);
      if (result.changed) {
        events.info(
          {
            event: 'policy.loaded',
            trigger,
            generation: g.generation,
            sha256: g.sha256,
            source: g.source,
            egress_rules: g.egressRules,
            skipped_rules: g.skippedRules,
            warnings: g.warnings,
          },
          `policy generation ${g.generation} loaded from ${g.source}`,
        );
      }
      return;
    }
    metrics.reloads.inc({ result: 'rejected', trigger });
    metrics.policyError.set(1);
    events.warn(
      { event: 'policy.rejected', trigger, source: config.policy, errors: result.error.errors },
      `policy rejected; ${store.loaded ? `generation ${store.current.generation} keeps serving` : 'nothing is served'}`,
    );
  };
  const store = new PolicyStore(config.policy, { report: logLoad });

  if (!(await store.load('start')).ok) return null;

  if (config.baseline.allowCidrs.length > 0) {
    events.warn(
      { event: 'baseline.exemptions', allow_cidrs: config.baseline.allowCidrs.map((c) => c.text) },
      'SSRF baseline exemptions in force',
    );
  }
  for (const { entry, metadata } of metadataOverlaps(config.baseline.allowCidrs)) {
    events.warn(
      { event: 'baseline.exemption_overlaps_metadata', entry, metadata },
      `baseline.allow_cidrs entry ${entry} covers metadata ${metadata.join(', ')}, which stays refused: only an entry that is exactly that address exempts it`,
    );
  }
  const resolver = createResolver({
    servers: config.dns.servers,
    timeoutMs: config.dns.timeoutMs,
    maxTtlSeconds: config.dns.cacheMaxTtlSeconds,
  });
  const registry = state.calls;
  const discovered = state.discovered;
  // The memory registry sweeps itself (create-state.ts); the memory history's idle keys here.
  const sweeper = memory ? setInterval(() => memory.sweep(), 10_000).unref() : null;
  const feed = new DecisionFeed();
  events.tapDecisions(feed);
  metrics.watchFeed(feed);
  let adminAddress: { address: string; port: number } | null = null;
  const proxy = new ProxyServer({
    config,
    store,
    resolver,
    registry,
    events,
    discovered,
    history,
    observer: metrics.observer(),
    otherListeners: () => (adminAddress ? [adminAddress] : []),
  });
  const bound = await proxy.listen(config.listen.host, config.listen.port);
  // Each listener's accept failures held back for its next line, reported when the proxy stops.
  const acceptFailuresHeldBack = [keepAccepting(proxy.server, 'proxy', events)];
  try {
    events.info(
      { event: 'listening', listener: 'proxy', address: bound.address, port: bound.port },
      `proxy listening on ${bound.address}:${bound.port}`,
    );
  } catch (err) {
    // The event log cannot be written: nothing is served unrecorded, and no listener is left
    // open to keep the process alive after the start has failed.
    await proxy.close(0);
    throw err;
  }

  const reload = async (trigger: string) => (await store.load(trigger)).ok;
  watcher =
    options.watch === false ? null : new PolicyWatcher({ file: config.policy, reload: (trigger) => reload(trigger).catch(reportLost) });
  // Seen is what the start read: an edit since then differs from it and is loaded.
  watcher?.start(store.current.sha256);
  const policyWriter = new PolicyWriter({ store, reload, events, expectDigest: (digest) => watcher?.expect(digest) });

  let admin: AdminServer | null = null;
  const running: Running = {
    config,
    proxy,
    store,
    state,
    registry,
    discovered,
    history,
    events,
    metrics,
    feed,
    policyWriter,
    get admin() {
      return admin;
    },
    reload,
    stop: async () => {
      for (const report of acceptFailuresHeldBack) report();
      if (sweeper) clearInterval(sweeper);
      watcher?.stop();
      events.tapDecisions(null);
      feed.close();
      await Promise.all([proxy.close(config.shutdownGraceMs), admin?.close()]);
      // After the calls: their background writes (history, discovered counts) go out first.
      await state.close();
    },
  };
  if (config.admin.listen) {
    // Dry runs refuse the proxy's own listeners as `self`, as the live proxy does.
    const isSelf = createSelfCheck({
      listeners: () => canonicalListeners([...(proxy.address ? [proxy.address] : []), ...(adminAddress ? [adminAddress] : [])]),
    });
    admin = new AdminServer({
      config,
      running,
      metrics,
      isSelf,
      resolver: createResolver({ servers: config.dns.servers, timeoutMs: config.dns.timeoutMs, maxTtlSeconds: 0 }),
    });
    try {
      adminAddress = await admin.listen(config.admin.listen.host, config.admin.listen.port);
    } catch (err) {
      await running.stop();
      throw err;
    }
    acceptFailuresHeldBack.push(keepAccepting(admin.server, 'admin', events));
    proxy.refreshSelf();
    events.info(
      { event: 'listening', listener: 'admin', address: adminAddress.address, port: adminAddress.port },
      `admin API listening on ${adminAddress.address}:${adminAddress.port}`,
    );
  }
  return running;
}

/**
 * A listener that fails to accept a connection says so (`accept_failed`, warn) and goes on
 * listening; one stuck failing (net/accept.ts) says so and ends the process with status 1, its
 * events written, for the supervisor to restart it. Returns what reports the failures held back.
 */
function keepAccepting(server: Server, listener: 'proxy' | 'admin', events: EventSink): () => void {
  return reportAcceptErrors(server, {
    report: (err, notReported) =>
      events.warn(
        { event: 'accept_failed', listener, code: err.code ?? null, not_reported: notReported },
        `${listener} listener: accepting a connection failed (${err.code ?? err.message}); still listening`,
      ),
    stuck: (err, failures, ms) => {
      events.warn(
        { event: 'accept_failed', listener, code: err.code ?? null, failures, stuck_ms: Math.round(ms) },
        `${listener} listener: accepting has failed ${failures} times in ${Math.round(ms)} ms without a pause (${err.code ?? err.message}); exiting`,
      );
      events.flush();
      process.exit(1);
    },
  });
}

export async function runServe(opts: ServeOptions, io: CommandIO): Promise<number> {
  const file = opts.config ?? process.env.MCP_EGRESS_CONFIG ?? 'config/proxy.yaml';
  const loaded = await loadProxyConfig(file);
  for (const d of loaded.diagnostics) io.err(`${formatDiagnostic(d)}\n`);
  if (!loaded.config) return 1;
  const config = applyOverrides(loaded.config, opts, io);
  if (!config) return 2;

  const logger = createLogger(config.log.level);
  const events = createEventSink(logger);
  // Less memory per idle tunnel at the same throughput (young-generation.ts).
  capYoungGeneration();
  // No back-to-back full collections while bodies are relayed (old-generation.ts).
  keepOldGenerationHeadroom();
  // Signals are ours before anything listens, held until the proxy is up (held-signals.ts).
  const signals = holdSignals(process, (signal) => {
    // Ending by the signal itself: the deferred event lines go out first.
    events.flush();
    process.kill(process.pid, signal);
  });
  let running: Running | null;
  try {
    running = await startProxy(config, events);
  } catch (err) {
    signals.release();
    events.warn({ event: 'startup_failed', err: (err as Error).message }, 'could not start');
    io.err(`error: ${(err as Error).message}\n`);
    return 1;
  }
  if (!running) {
    signals.release();
    io.err(`error: the policy ${config.policy} is not valid; not serving (see the policy.rejected event)\n`);
    return 1;
  }
  const r = running;

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = async (signal: string) => {
      if (stopping) return;
      stopping = true;
      events.info({ event: 'shutdown', signal, open_calls: r.proxy.activeCalls, grace_ms: config.shutdownGraceMs }, `${signal}: stopping`);
      await r.stop();
      events.info({ event: 'stopped' }, 'stopped');
      events.flush();
      resolve(0);
    };
    signals.deliver((signal) => {
      if (signal === 'SIGHUP') void r.reload('SIGHUP').catch(reportLost);
      // A second stop signal does not wait for the grace period (held-signals.ts).
      else if (stopping) signals.force(signal);
      else void stop(signal);
    });
  });
}
