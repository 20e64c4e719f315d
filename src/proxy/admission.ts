/**
 * Admission: whether a call may go out, and the accounting of the calls that did. Every call
 * (each CONNECT, each plain-HTTP request on a kept-alive connection) is admitted the same way:
 * client identity, attribution, one policy generation, one decision (no DNS for a name refused
 * by name; one resolution otherwise). Then the per-client tunnel cap, and from there the open
 * calls (drained on shutdown) and the events every call ends with: its decision line and its
 * closed line, each under the call's own `conn_id` (built by call-events.ts, written here).
 *
 * Threat: the guarded server chooses every header and every destination. Scope: a refusal here
 * is decided before anything is dialled or forwarded; the answer goes back through the caller
 * (connect.ts, forward.ts), which owns the socket.
 *
 * Longer than 300 lines on purpose: admission, the tunnel cap and the per-call events share one
 * connection id counter and one set of open calls; splitting them would spread that state.
 */
import { randomBytes } from 'node:crypto';
import type { AddressClass } from '../net/baseline.js';
import type { ProxyConfig } from '../config/proxy-config.js';
import { readForDecision } from '../attribution/decision-reads.js';
import type { DecisionReads, Histories } from '../attribution/decision-reads.js';
import type { Attribution, AttributionHeaders } from '../attribution/attribute.js';
import { identify } from '../attribution/identity.js';
import type { CallStore, DiscoveredLog, HistoryStore, MaybePromise } from '../state/types.js';
import type { IpAddress } from '../net/address.js';
import type { Target } from '../net/destination.js';
import { DialError } from '../net/pinned-dial.js';
import type { NameResolver } from '../net/resolve.js';
import type { Decision, DecisionReason, HistoryCall } from '../policy/types.js';
import { decideCall } from '../decide/decide-call.js';
import type { CallOutcome } from '../decide/decide-call.js';
import type { EndReason, EventSink } from '../events/events.js';
import type { PolicyGeneration, PolicyStore } from '../live/policy-store.js';
import { failure, refusal } from './answers.js';
import { closedLine, decisionLine, refusedBeforeDecision } from './call-events.js';
import { recordDecided } from './call-history.js';
import type { Answer, CallLabel } from './answers.js';
import { LiveSet } from './live-set.js';

/** Observes every finished decision and closed call (metrics). */
export interface ProxyObserver {
  decision?(decision: Decision, method: string): void;
  closed?(bytesUp: number, bytesDown: number, end: EndReason, tunnel: boolean): void;
  dns?(durationMs: number): void;
  failure?(code: string): void;
  tunnels?(open: number): void;
}

export interface AdmissionOptions {
  readonly config: ProxyConfig;
  readonly store: PolicyStore;
  readonly resolver: NameResolver;
  readonly registry: CallStore;
  readonly events: EventSink;
  readonly discovered: DiscoveredLog;
  /** Session history: every decided call is recorded; read when the policy has sequence clauses. */
  readonly history: HistoryStore;
  /** The baseline's classification, with this process's own listeners as `self` (net/self.ts). */
  readonly classify: (ip: IpAddress, port: number) => AddressClass | null;
  readonly observer?: ProxyObserver | undefined;
}

/** A call that was admitted: who, under which policy generation, and what was decided. */
export interface Admitted {
  readonly connId: string;
  readonly client: string;
  /** What `max_tunnels_per_client` counts by (identity.ts): the user, or without users the source address. */
  readonly limitKey: string;
  readonly call: Attribution;
  /** Every call the connection is attributed to (usually one): each records the call in its history. */
  readonly calls: readonly Attribution[];
  readonly generation: number;
  /** The deciding policy's `policy_digest`. */
  readonly digest: string;
  readonly decision: Decision;
  readonly candidates: readonly IpAddress[];
  readonly target: Target;
  readonly method: string;
}

export type AdmissionResult = { readonly ok: true; readonly admitted: Admitted } | { readonly ok: false; readonly answer: Answer };

/** An open call, as shutdown sees it. */
export interface ActiveCall {
  abort(reason: EndReason): void;
}

/** A call being admitted, before its decision: who, where, and its own `conn_id`. */
interface CallUnderWay {
  readonly connId: string;
  readonly client: string;
  readonly limitKey: string;
  readonly target: Target;
  readonly method: string;
}

/** The history of every call when the policy has no sequence clause: one shared empty array, not one per call. */
const NO_HISTORY: readonly HistoryCall[] = Object.freeze([]);

export class Admission {
  /** Open calls (tunnels and forwarded requests): what shutdown waits for, then aborts. */
  readonly active = new LiveSet<ActiveCall>();
  private readonly tunnelsByClient = new Map<string, number>();
  private openTunnels = 0;
  private readonly connPrefix = randomBytes(4).toString('hex');
  private connCounter = 0;

  /** The attribution headers' names (config, fixed for the process): one object, not one per call. */
  private readonly headerNames: AttributionHeaders;

  constructor(private readonly options: AdmissionOptions) {
    const { attribution } = options.config;
    this.headerNames = { tool: attribution.toolHeader, call: attribution.callHeader, session: attribution.sessionHeader };
  }

  get config(): ProxyConfig {
    return this.options.config;
  }

  get events(): EventSink {
    return this.options.events;
  }

  get history(): HistoryStore {
    return this.options.history;
  }

  get observer(): ProxyObserver | undefined {
    return this.options.observer;
  }

  nextConnId(): string {
    return `${this.connPrefix}-${(++this.connCounter).toString(36)}`;
  }

  labelFor(target: Target | null, call?: Attribution): CallLabel {
    return { tool: call?.tool ?? null, callId: call?.callId ?? null, host: target?.host.host ?? null, port: target?.port ?? null };
  }

  /**
   * Admits one call. Answers at once when nothing is awaited (the memory store, an IP literal or
   * a cached answer): a promise only when a shared store, a DNS query or a history read needs one.
   */
  admit(raw: readonly string[], remoteAddress: string | undefined, target: Target, method: string): MaybePromise<AdmissionResult> {
    const { config, events } = this.options;
    const connId = this.nextConnId();
    // A scan of the raw list: cheaper than building req.headersDistinct for a few names.
    const headerValues = (name: string) => {
      let values: string[] | undefined;
      for (let i = 0; i < raw.length; i += 2) {
        const key = raw[i] as string;
        if (key.length === name.length && key.toLowerCase() === name) (values ??= []).push(raw[i + 1] as string);
      }
      return values;
    };
    // The first Proxy-Authorization counts, as in node:http's req.headers (later ones are dropped).
    const identity = identify(headerValues('proxy-authorization')?.[0], remoteAddress, config.auth.users);
    if (!identity.ok && identity.code === 'bad_request')
      return { ok: false, answer: this.badRequest(connId, identity.reason, target, method) };
    if (!identity.ok) {
      events.error({ conn_id: connId, code: 'proxy_auth_required', host: target.host.host, port: target.port, method }, identity.reason);
      this.options.observer?.failure?.('proxy_auth_required');
      return {
        ok: false,
        answer: failure('proxy_auth_required', identity.reason, this.labelFor(target), {
          'proxy-authenticate': 'Basic realm="mcp-egress-proxy"',
        }),
      };
    }
    const call: CallUnderWay = { connId, client: identity.client, limitKey: identity.limitKey, target, method };
    // The generation whose needs are read is the one that decides. Attribution and, with sequence
    // clauses, histories: one read (decision-reads.ts); only a shared store answers with a promise,
    // and then the decision waits (at most state.timeout_ms).
    const generation = this.options.store.current;
    const now = Date.now();
    const reads = readForDecision(headerValues, call.client, {
      names: this.headerNames,
      trust: config.attribution.trust,
      registry: this.options.registry,
      history: this.options.history,
      withHistories: generation.policy.hasSequenceRules,
      now,
    });
    if (reads instanceof Promise)
      return reads.then(
        (r) => this.read(call, r, generation, now),
        (err: unknown) => this.registrationsUnavailable(call, err),
      );
    return this.read(call, reads, generation, now);
  }

  /** The call's attribution (and the histories a sequence clause needs) are read: decide. */
  private read(c: CallUnderWay, reads: DecisionReads, generation: PolicyGeneration, now: number): MaybePromise<AdmissionResult> {
    const attribution = reads.attribution;
    if (attribution.kind === 'bad_request') return { ok: false, answer: this.badRequest(c.connId, attribution.reason, c.target, c.method) };
    if (attribution.kind === 'unattributed') {
      const call: Attribution = { tool: null, callId: attribution.callId, sessionId: null };
      const decision = this.logRefusedBeforeDecision('unattributed', attribution.reason, c, [call], generation);
      const answer = refusal(decision, this.labelFor(c.target, call), this.options.config.denyStatus, attribution.reason);
      return { ok: false, answer };
    }
    // History only when a rule has a sequence clause; otherwise one shared empty one.
    const histories = reads.histories;
    if (generation.policy.hasSequenceRules && histories === null)
      return { ok: false, answer: this.stateUnavailable(c, attribution.calls, generation) };
    return this.decide(c, attribution.calls, generation, histories, now);
  }

  private decide(
    c: CallUnderWay,
    calls: readonly Attribution[],
    generation: PolicyGeneration,
    histories: Histories | null,
    now: number,
  ): MaybePromise<AdmissionResult> {
    const contexts = calls.map((call, i) => {
      const history = histories ? (histories[i] as readonly HistoryCall[]) : NO_HISTORY;
      return { tool: call.tool, server: c.client, port: c.target.port, callId: call.callId, now, history };
    });
    const outcome = decideCall(generation.policy, contexts, c.target, {
      resolver: this.options.resolver,
      classify: this.options.classify,
    });
    return outcome instanceof Promise
      ? outcome.then((o) => this.decided(c, calls, generation, o))
      : this.decided(c, calls, generation, outcome);
  }

  private decided(c: CallUnderWay, calls: readonly Attribution[], generation: PolicyGeneration, outcome: CallOutcome): AdmissionResult {
    const { events, config } = this.options;
    const call = calls[outcome.kind === 'decided' ? outcome.index : 0] as Attribution;
    if (outcome.dnsMs !== null) this.options.observer?.dns?.(outcome.dnsMs);
    if (outcome.kind === 'dns_error') {
      const { connId, target, method, client } = c;
      const fields = {
        conn_id: connId,
        code: 'dns_error',
        dns: outcome.error.kind,
        host: target.host.host,
        port: target.port,
        method,
        server: client,
      };
      events.error({ ...fields, tool: call.tool, call_id: call.callId }, outcome.error.message);
      this.options.observer?.failure?.('dns_error');
      return {
        ok: false,
        answer: failure('dns_error', `could not resolve ${target.host.host} (${outcome.error.kind})`, this.labelFor(target, call)),
      };
    }
    const admitted: Admitted = {
      connId: c.connId,
      client: c.client,
      limitKey: c.limitKey,
      call,
      calls,
      generation: generation.generation,
      digest: generation.digest,
      decision: outcome.decision,
      candidates: outcome.candidates,
      target: c.target,
      method: c.method,
    };
    if (outcome.decision.uncovered) this.recordDiscovered(admitted);
    if (!outcome.decision.dispatched) {
      this.logDecision(admitted, null);
      return { ok: false, answer: refusal(outcome.decision, this.labelFor(c.target, call), config.denyStatus) };
    }
    return { ok: true, admitted };
  }

  /** Logs the decision line of a call refused before the policy could decide it (no candidates, no address). */
  private logRefusedBeforeDecision(
    reason: DecisionReason,
    why: string,
    c: CallUnderWay,
    calls: readonly Attribution[],
    generation: PolicyGeneration,
  ): Decision {
    const decision = refusedBeforeDecision(reason);
    const admitted: Admitted = {
      connId: c.connId,
      client: c.client,
      limitKey: c.limitKey,
      call: calls[0] as Attribution,
      calls,
      generation: generation.generation,
      digest: generation.digest,
      decision,
      candidates: [],
      target: c.target,
      method: c.method,
    };
    this.logDecision(admitted, null, why);
    return decision;
  }

  /** Fail closed: the history a sequence clause needs cannot be read (call-history.ts); no decision is made. */
  private stateUnavailable(c: CallUnderWay, calls: readonly Attribution[], generation: PolicyGeneration): Answer {
    const call = calls[0] as Attribution;
    const key = call.sessionId !== null ? `session ${call.sessionId}` : `client ${c.client}`;
    const message =
      `the session history of ${key} cannot be read completely now (a history bound dropped calls still inside ` +
      "the policy's longest window, or the state store is unavailable); refused until it can";
    this.logRefusedBeforeDecision('state_unavailable', message, c, calls, generation);
    return failure('state_unavailable', message, this.labelFor(c.target, call));
  }

  /**
   * Fail closed: attribution needed the registered calls and the shared store could not give
   * them (down, or slower than `state.timeout_ms`): refused with 503 `state_unavailable`.
   */
  private registrationsUnavailable(c: CallUnderWay, err: unknown): AdmissionResult {
    const generation = this.options.store.current;
    const why = `the shared state store cannot answer (${(err as Error)?.message ?? String(err)})`;
    const call: Attribution = { tool: null, callId: null, sessionId: null };
    this.logRefusedBeforeDecision('state_unavailable', why, c, [call], generation);
    this.options.observer?.failure?.('state_unavailable');
    return {
      ok: false,
      answer: failure('state_unavailable', `${why}; the call is refused rather than decided without it`, this.labelFor(c.target)),
    };
  }

  /** Observe mode: a background write with Redis; `egress.discovered` once per entry (fleet-wide). */
  private recordDiscovered(a: Admitted): void {
    const { events } = this.options;
    const connId = a.connId;
    this.options.discovered.record(a.client, a.call.tool, a.target.host.host, a.target.port, ({ server, tool, host, port, first_seen }) =>
      events.discovered({ server, tool, host, port, first_seen, conn_id: connId }),
    );
  }

  // ---- the per-client tunnel cap (max_tunnels_per_client) ----

  /** Takes a tunnel slot for the admitted call, or returns the `too_many_tunnels` answer. */
  takeTunnel(a: Admitted): Answer | null {
    const { config, events, observer } = this.options;
    const perClient = this.tunnelsByClient.get(a.limitKey) ?? 0;
    if (perClient >= config.limits.maxTunnelsPerClient) {
      events.error(
        { conn_id: a.connId, code: 'too_many_tunnels', server: a.client, limit_key: a.limitKey, open: perClient },
        'tunnel limit reached',
      );
      observer?.failure?.('too_many_tunnels');
      const who = config.auth.users.length > 0 ? `client ${a.limitKey}` : `source address ${a.limitKey}`;
      const message = `${who} has ${perClient} open tunnels (limit ${config.limits.maxTunnelsPerClient})`;
      return failure('too_many_tunnels', message, this.labelFor(a.target, a.call), { 'retry-after': '1' });
    }
    this.adjustTunnels(a.limitKey, +1);
    return null;
  }

  releaseTunnel(limitKey: string): void {
    this.adjustTunnels(limitKey, -1);
  }

  private adjustTunnels(limitKey: string, delta: number): void {
    const n = (this.tunnelsByClient.get(limitKey) ?? 0) + delta;
    if (n <= 0) this.tunnelsByClient.delete(limitKey);
    else this.tunnelsByClient.set(limitKey, n);
    this.openTunnels += delta;
    this.options.observer?.tunnels?.(this.openTunnels);
  }

  // ---- the events a call ends with ----

  /**
   * Writes the decision line now, or with `deferred` adds it to the pending batch and returns
   * the ticket to pass to `ensureWritten` before the client hears of the call.
   */
  logDecision(a: Admitted, pinned: string | null, detail?: string, deferred = false): number {
    const event = decisionLine(a, pinned, detail);
    // Session history: every decided call, with the address dialled (none when refused or the dial failed).
    if (this.options.history.retentionSeconds > 0) {
      const address = pinned === null ? null : (a.candidates.find((c) => c.text === pinned) ?? null);
      recordDecided(this.options.history, a.calls, a.client, a.target.host.host, address);
    }
    this.options.observer?.decision?.(a.decision, a.method);
    if (deferred) return this.options.events.deferredDecision(event);
    this.options.events.decision(event);
    return 0;
  }

  closedEvent(connId: string, up: number, down: number, started: number, end: EndReason, tunnel: boolean): void {
    this.options.events.closed(closedLine(connId, up, down, started, end));
    this.options.observer?.closed?.(up, down, end, tunnel);
  }

  badRequest(connId: string, message: string, target: Target | null, method: string): Answer {
    this.options.events.error(
      { conn_id: connId, code: 'bad_request', method, host: target?.host.host ?? null, port: target?.port ?? null },
      message,
    );
    this.options.observer?.failure?.('bad_request');
    return failure('bad_request', message, this.labelFor(target));
  }

  dialFailure(a: Admitted, err: unknown): Answer {
    const timeout = err instanceof DialError && err.kind === 'timeout';
    const code = timeout ? 'upstream_timeout' : 'upstream_unreachable';
    const where = `${a.target.host.host}:${a.target.port}`;
    const message = timeout ? `connecting to ${where} timed out` : `could not connect to ${where}`;
    const attempts = err instanceof DialError ? err.attempts : String(err);
    this.options.events.error({ conn_id: a.connId, code, host: a.target.host.host, port: a.target.port, attempts }, message);
    this.options.observer?.failure?.(code);
    return failure(code, message, this.labelFor(a.target, a.call));
  }

  /**
   * A bug of ours while handling a call: logged with its stack, answered 500 `internal_error`
   * (the client's request was not at fault, so not `bad_request`). Nothing was forwarded.
   */
  internalError(err: unknown, target: Target | null): Answer {
    this.options.events.error({ event: 'proxy.internal_error', err: String((err as Error)?.stack ?? err) }, 'internal error');
    this.options.observer?.failure?.('internal_error');
    return failure('internal_error', 'the proxy could not handle this request', this.labelFor(target));
  }
}
