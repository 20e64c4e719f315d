/**
 * Prometheus metrics (prom-client): the proxy's observer hooks turned into counters, gauges and
 * a histogram. Labels are bounded: verdicts, reasons, address classes and error codes are fixed
 * sets; rule ids come from the operator's policy, never from traffic.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Decision } from '../policy/types.js';
import type { ProxyObserver } from '../proxy/server.js';

export class Metrics {
  readonly registry = new Registry();
  private readonly decisions = new Counter({ name: 'egress_decisions_total', help: 'Calls decided, by verdict, reason and deciding rule', labelNames: ['verdict', 'reason', 'rule', 'dispatched', 'shadow'] as const, registers: [this.registry] });
  private readonly refusals = new Counter({ name: 'egress_baseline_refusals_total', help: 'Calls refused by the SSRF baseline, by address class', labelNames: ['address_class'] as const, registers: [this.registry] });
  private readonly failures = new Counter({ name: 'egress_failures_total', help: 'Calls that failed without a policy refusal, by code', labelNames: ['code'] as const, registers: [this.registry] });
  /** Read when scraped: setting a gauge on every tunnel open and close costs more than it tells. */
  private openTunnels = 0;
  private readonly tunnels: Gauge = new Gauge({
    name: 'egress_open_tunnels',
    help: 'Open CONNECT tunnels',
    registers: [this.registry],
    collect: (): void => this.tunnels.set(this.openTunnels),
  });
  private readonly bytes = new Counter({ name: 'egress_bytes_total', help: 'Bytes relayed, by direction (up: client to upstream)', labelNames: ['direction'] as const, registers: [this.registry] });
  private readonly closed = new Counter({ name: 'egress_calls_closed_total', help: 'Dispatched calls ended, by how they ended', labelNames: ['end', 'kind'] as const, registers: [this.registry] });
  private readonly dns = new Histogram({ name: 'egress_dns_seconds', help: 'Time spent asking DNS servers (cache hits excluded)', buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers: [this.registry] });
  readonly reloads = new Counter({ name: 'egress_policy_reloads_total', help: 'Policy loads, by result', labelNames: ['result', 'trigger'] as const, registers: [this.registry] });
  readonly generation = new Gauge({ name: 'egress_policy_generation', help: 'The serving policy generation', registers: [this.registry] });
  readonly policyError = new Gauge({ name: 'egress_policy_last_reload_failed', help: '1 while the last reload was rejected (the previous policy serves)', registers: [this.registry] });
  readonly registered = new Gauge({ name: 'egress_registered_calls', help: 'Open registered tool calls', registers: [this.registry] });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
  }

  observer(): ProxyObserver {
    // Bound children, found by one string key: prom-client's labelled inc() sorts and hashes
    // the label object on every call, which showed in the per-call profile.
    const decisions = childCache((k: string, d: Decision) => this.decisions.labels(d.verdict, d.reason, d.rule?.id ?? '', String(d.dispatched), String(d.shadow)));
    const closed = childCache((k: string, end: string, kind: string) => this.closed.labels(end, kind));
    const bytesUp = this.bytes.labels('up');
    const bytesDown = this.bytes.labels('down');
    return {
      decision: (d: Decision) => {
        decisions(`${d.verdict}|${d.reason}|${d.dispatched}|${d.shadow}|${d.rule?.id ?? ''}`, d).inc();
        if (d.address_class) this.refusals.inc({ address_class: d.address_class });
      },
      closed: (up, down, end, tunnel) => {
        bytesUp.inc(up);
        bytesDown.inc(down);
        const kind = tunnel ? 'tunnel' : 'http';
        closed(`${end}|${kind}`, end, kind).inc();
      },
      dns: (ms) => this.dns.observe(ms / 1000),
      failure: (code) => this.failures.inc({ code }),
      tunnels: (open) => {
        this.openTunnels = open;
      },
    };
  }
}

/** Memoises `make` by its first argument (the label values joined). */
function childCache<A extends unknown[], C>(make: (key: string, ...args: A) => C): (key: string, ...args: A) => C {
  const children = new Map<string, C>();
  return (key, ...args) => {
    let child = children.get(key);
    if (child === undefined) children.set(key, (child = make(key, ...args)));
    return child;
  };
}
