/**
 * Prometheus metrics (prom-client): the proxy's observer hooks turned into counters, gauges and
 * a histogram. Labels are bounded: verdicts, reasons, address classes and error codes are fixed
 * sets; rule ids come from the operator's policy, never from traffic.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Decision } from '../policy/types.js';
import type { EndReason } from '../events/events.js';
import type { DecisionFeed } from '../events/decision-feed.js';
import type { ProxyObserver } from '../proxy/admission.js';

export class Metrics {
  readonly registry = new Registry();
  // Per-call counts are plain numbers handed to prom-client when scraped: its inc() hashes the
  // label set on every call (bound children too), a few per cent of the per-request profile.
  private readonly decisionTally = new Tally();
  private readonly bytesTally = new Tally();
  private readonly closedTally = new Tally();
  /** The closed tally's entries by end reason, then [http, tunnel]. */
  private readonly closedByEnd: Partial<Record<EndReason, [TallyEntry | null, TallyEntry | null]>> = {};
  private readonly decisions: Counter<string> = new Counter({
    name: 'egress_decisions_total',
    help: 'Calls decided, by verdict, reason and deciding rule',
    labelNames: ['verdict', 'reason', 'rule', 'dispatched', 'shadow'] as const,
    registers: [this.registry],
    collect: (): void => this.decisionTally.publish(this.decisions),
  });
  private readonly refusals = new Counter({
    name: 'egress_baseline_refusals_total',
    help: 'Calls refused by the SSRF baseline, by address class',
    labelNames: ['address_class'] as const,
    registers: [this.registry],
  });
  private readonly failures = new Counter({
    name: 'egress_failures_total',
    help: 'Calls that failed without a policy refusal, by code',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });
  /** Read when scraped: setting a gauge on every tunnel open and close costs more than it tells. */
  private openTunnels = 0;
  private readonly tunnels: Gauge = new Gauge({
    name: 'egress_open_tunnels',
    help: 'Open CONNECT tunnels',
    registers: [this.registry],
    collect: (): void => this.tunnels.set(this.openTunnels),
  });
  private readonly bytes: Counter<string> = new Counter({
    name: 'egress_bytes_total',
    help: 'Bytes relayed, by direction (up: client to upstream)',
    labelNames: ['direction'] as const,
    registers: [this.registry],
    collect: (): void => this.bytesTally.publish(this.bytes),
  });
  private readonly closed: Counter<string> = new Counter({
    name: 'egress_calls_closed_total',
    help: 'Dispatched calls ended, by how they ended',
    labelNames: ['end', 'kind'] as const,
    registers: [this.registry],
    collect: (): void => this.closedTally.publish(this.closed),
  });
  private readonly dns = new Histogram({
    name: 'egress_dns_seconds',
    help: 'Time spent asking DNS servers (cache hits excluded)',
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly reloads = new Counter({
    name: 'egress_policy_reloads_total',
    help: 'Policy loads, by result',
    labelNames: ['result', 'trigger'] as const,
    registers: [this.registry],
  });
  readonly generation = new Gauge({ name: 'egress_policy_generation', help: 'The serving policy generation', registers: [this.registry] });
  readonly policyError = new Gauge({
    name: 'egress_policy_last_reload_failed',
    help: '1 while the last reload was rejected (the previous policy serves)',
    registers: [this.registry],
  });
  readonly registered = new Gauge({ name: 'egress_registered_calls', help: 'Open registered tool calls', registers: [this.registry] });
  /** interface.md "Shared state": 1 while the state store can answer (always 1 for memory). */
  readonly stateUp = new Gauge({
    name: 'mcp_egress_state_up',
    help: 'Whether the state store (state.store) is reachable: 1 up, 0 down',
    registers: [this.registry],
  });
  readonly stateWritesDropped = new Counter({
    name: 'mcp_egress_state_writes_dropped_total',
    help: 'Background state writes (history, discovered counts) given up, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly stateWritesRetried = new Counter({
    name: 'mcp_egress_state_writes_retried_total',
    help: 'Background state writes queued again after a failure',
    registers: [this.registry],
  });
  /** Read when scraped: background writes waiting for the store. */
  stateQueued: () => number = () => 0;
  private readonly stateQueue: Gauge = new Gauge({
    name: 'mcp_egress_state_writes_queued',
    help: 'Background state writes waiting for the state store',
    registers: [this.registry],
    collect: (): void => this.stateQueue.set(this.stateQueued()),
  });

  private feed: DecisionFeed | null = null;
  private readonly feedDropped: Counter<string> = new Counter({
    name: 'egress_events_dropped_total',
    help: 'Decisions not sent to a GET /v1/events stream whose client fell behind (its buffer was full)',
    registers: [this.registry],
    collect: (): void => {
      this.feedDropped.reset();
      this.feedDropped.inc(this.feed?.droppedTotal ?? 0);
    },
  });
  private readonly feedStreams: Gauge = new Gauge({
    name: 'egress_events_streams',
    help: 'Open GET /v1/events streams',
    registers: [this.registry],
    collect: (): void => this.feedStreams.set(this.feed?.subscriberCount ?? 0),
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
  }

  /** Reads the feed's drop count and stream count when scraped. */
  watchFeed(feed: DecisionFeed): void {
    this.feed = feed;
  }

  observer(): ProxyObserver {
    const upLabels = (): Record<string, string> => ({ direction: 'up' });
    const downLabels = (): Record<string, string> => ({ direction: 'down' });
    return {
      decision: (d: Decision) => {
        const rule = d.rule?.id ?? '';
        // Keyed by the rule id and the outcome's flags, not a string built per call.
        const flags = (d.dispatched ? 1 : 0) | (d.shadow ? 2 : 0);
        this.decisionTally.addDecision(rule, d.verdict, d.reason, flags, () => ({
          verdict: d.verdict,
          reason: d.reason,
          rule,
          dispatched: String(d.dispatched),
          shadow: String(d.shadow),
        }));
        if (d.address_class) this.refusals.inc({ address_class: d.address_class });
      },
      closed: (bytesUp, bytesDown, end, tunnel) => {
        this.bytesTally.add('up', upLabels, bytesUp);
        this.bytesTally.add('down', downLabels, bytesDown);
        // On every call: one entry per end reason and kind, found without building a key.
        const byKind = (this.closedByEnd[end] ??= [null, null]);
        const slot = tunnel ? 1 : 0;
        let entry = byKind[slot];
        if (!entry) {
          const kind = tunnel ? 'tunnel' : 'http';
          byKind[slot] = entry = this.closedTally.entry(`${end}|${kind}`, () => ({ end, kind }));
        }
        entry.n++;
      },
      dns: (ms) => this.dns.observe(ms / 1000),
      failure: (code) => this.failures.inc({ code }),
      tunnels: (open) => {
        this.openTunnels = open;
      },
    };
  }
}

interface TallyEntry {
  readonly labels: Record<string, string>;
  n: number;
}

/** Counts by label set, keyed by a string the caller builds (cheaper than hashing the labels). */
class Tally {
  private readonly counts = new Map<string, TallyEntry>();
  /** Decisions: rule id → verdict → reason → flags → the entry in `counts`' place. */
  private readonly decisions = new Map<string, Map<string, Map<string, TallyEntry[]>>>();

  add(key: string, labels: () => Record<string, string>, n = 1): void {
    this.entry(key, labels).n += n;
  }

  /** The count of `key`, made (at 0) the first time. */
  entry(key: string, labels: () => Record<string, string>): TallyEntry {
    let entry = this.counts.get(key);
    if (!entry) this.counts.set(key, (entry = { labels: labels(), n: 0 }));
    return entry;
  }

  /** One decision: the strings come from the policy and the engine (no key is built per call). */
  addDecision(rule: string, verdict: string, reason: string, flags: number, labels: () => Record<string, string>): void {
    let byVerdict = this.decisions.get(rule);
    if (!byVerdict) this.decisions.set(rule, (byVerdict = new Map<string, Map<string, TallyEntry[]>>()));
    let byReason = byVerdict.get(verdict);
    if (!byReason) byVerdict.set(verdict, (byReason = new Map<string, TallyEntry[]>()));
    let byFlags = byReason.get(reason);
    if (!byFlags) byReason.set(reason, (byFlags = []));
    let entry = byFlags[flags];
    if (!entry) this.counts.set(`${verdict}|${reason}|${flags}|${rule}`, (entry = byFlags[flags] = { labels: labels(), n: 0 }));
    entry.n++;
  }

  /** Sets `counter` to these counts (called by prom-client when the registry is read). */
  publish(counter: Counter<string>): void {
    counter.reset();
    for (const { labels, n } of this.counts.values()) counter.inc(labels, n);
  }
}
