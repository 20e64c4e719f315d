/**
 * The event stream (interface.md "Events"): pino JSON lines on stdout, one `egress.decision` per
 * call built from the Decision value, one `egress.closed` when a dispatched call ends. These two
 * are written on every call, so they are serialised here by hand (the same JSON pino would
 * write, field for field; a test compares them) rather than through pino's generic path. Lines
 * go to the destination of event-destination.ts. Secrets never reach a line: nothing logs
 * request headers, and the attribution values are labels, not credentials.
 */
import pino from 'pino';
import type { DestinationStream, Logger } from 'pino';
import type { AfterMatch, Decision, RuleRef } from '../policy/types.js';
import { BatchedDestination, createEventDestination } from './event-destination.js';

export type EndReason = 'client_closed' | 'upstream_closed' | 'idle_timeout' | 'error' | 'shutdown';

export interface DecisionEvent {
  readonly conn_id: string;
  readonly policy_generation: number;
  readonly decision: Decision;
  readonly tool: string | null;
  readonly call_id: string | null;
  readonly session_id: string | null;
  readonly server: string;
  readonly host: string;
  readonly port: number;
  readonly method: string;
  readonly pinned_address: string | null;
  /** The first 12 hex digits of the deciding policy's sha256 (which version decided, across a fleet). */
  readonly policy_digest: string;
  /** Extra words for refusals the policy did not decide (unattributed). */
  readonly detail?: string;
}

export interface ClosedEvent {
  readonly conn_id: string;
  readonly bytes_up: number;
  readonly bytes_down: number;
  readonly duration_ms: number;
  readonly end: EndReason;
}

/** Gets each decision line as the sink writes it (the console's feed, decision-feed.ts). */
export interface DecisionTap {
  decision(event: DecisionEvent, line: string): void;
}

export interface EventSink {
  /** Writes the decision line now. */
  decision(event: DecisionEvent): void;
  /**
   * Adds the decision line to the pending batch (event-destination.ts) and returns its ticket:
   * the caller passes it to `ensureWritten` before the client hears anything of the call.
   */
  deferredDecision(event: DecisionEvent): number;
  ensureWritten(ticket: number): void;
  closed(event: ClosedEvent): void;
  /** A call that failed before or without a policy decision (bad request, DNS, auth, limits). */
  error(fields: Record<string, unknown>, msg: string): void;
  discovered(fields: Record<string, unknown>): void;
  info(fields: Record<string, unknown>, msg: string): void;
  warn(fields: Record<string, unknown>, msg: string): void;
  flush(): void;
  /** Hands each decision line, as written, to `tap` as well (the console's feed); null stops it. */
  tapDecisions(tap: DecisionTap | null): void;
}

/**
 * Each logger's destination, as createLogger made it: the event sink writes its pre-rendered
 * lines there directly (pino has no public accessor for a logger's stream).
 */
const destinations = new WeakMap<Logger, DestinationStream>();

export function createLogger(level: string, destination: DestinationStream = createEventDestination()): Logger {
  const logger = pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      // Belt and braces: no code path logs these, and if one ever did they would be censored.
      redact: { paths: ['headers.authorization', 'headers["proxy-authorization"]', 'password', 'token'], censor: '[REDACTED]' },
    },
    destination,
  );
  destinations.set(logger, destination);
  return logger;
}

function decisionMessage(e: DecisionEvent): string {
  const d = e.decision;
  const where = `${e.host}:${e.port}`;
  const after = d.after ? ` after ${d.after.tool ?? 'an unattributed call'} ${d.after.seconds_ago} s ago` : '';
  const by = d.rule ? `rule ${d.rule.id}${after}` : d.reason === 'default' ? 'the default verdict' : d.reason;
  if (d.shadow) return `[shadow] would deny ${where} (${by})`;
  if (!d.dispatched) return `deny ${where} (${by})`;
  return `${d.verdict} ${where} (${by})`;
}

const str = (v: string | null): string => (v === null ? 'null' : JSON.stringify(v));

function ruleJson(rule: RuleRef | null): string {
  return rule === null ? 'null' : `{"id":${JSON.stringify(rule.id)},"label":${str(rule.label)},"priority":${rule.priority}}`;
}

function afterJson(a: AfterMatch | null): string {
  if (a === null) return 'null';
  return `{"call_id":${str(a.call_id)},"tool":${str(a.tool)},"server":${str(a.server)},"session_id":${str(a.session_id)},"host":${str(a.host)},"seconds_ago":${a.seconds_ago}}`;
}

function addressesJson(addresses: readonly string[]): string {
  let out = '[';
  for (let i = 0; i < addresses.length; i++) out += (i ? ',' : '') + JSON.stringify(addresses[i]);
  return out + ']';
}

let headAt = -1;
let head = '';
let secondAt = -1;
let secondText = '';

/**
 * The head pino writes for an info line of this process: level, time, pid. Made once a
 * millisecond, and the date only once a second (toISOString is most of the cost).
 */
function infoHead(): string {
  const now = Date.now();
  if (now !== headAt) {
    headAt = now;
    const second = now - (now % 1000);
    if (second !== secondAt) {
      secondAt = second;
      secondText = new Date(second).toISOString().slice(0, 20);
    }
    const ms = now - second;
    head = `{"level":"info","time":"${secondText}${ms < 10 ? '00' : ms < 100 ? '0' : ''}${ms}Z","pid":${process.pid}`;
  }
  return head;
}

/** One `egress.decision` line, as pino would write it for the object in createEventSink. */
export function decisionLine(e: DecisionEvent): string {
  const d = e.decision;
  return (
    `${infoHead()},"event":"egress.decision","conn_id":${JSON.stringify(e.conn_id)},"policy_generation":${e.policy_generation}` +
    `,"verdict":"${d.verdict}","dispatched":${d.dispatched},"shadow":${d.shadow},"reason":"${d.reason}","rule":${ruleJson(d.rule)}` +
    `,"tool":${str(e.tool)},"call_id":${str(e.call_id)},"session_id":${str(e.session_id)},"server":${JSON.stringify(e.server)}` +
    `,"host":${JSON.stringify(e.host)},"port":${e.port},"method":${JSON.stringify(e.method)},"addresses":${addressesJson(d.addresses)}` +
    `,"pinned_address":${str(e.pinned_address)},"address_class":${str(d.address_class ?? null)},"after":${afterJson(d.after)}` +
    `,"policy_digest":${JSON.stringify(e.policy_digest)}` +
    `${e.detail ? `,"detail":${JSON.stringify(e.detail)}` : ''},"msg":${JSON.stringify(decisionMessage(e))}}\n`
  );
}

/**
 * The decision event a line of `decisionLine` tells (the feed keeps lines, not objects). What the
 * line does not carry is empty: no `trace`, `uncovered` false.
 */
export function parseDecisionLine(line: string): DecisionEvent {
  const o = JSON.parse(line) as Record<string, unknown> & {
    verdict: Decision['verdict'];
    dispatched: boolean;
    shadow: boolean;
    reason: Decision['reason'];
    rule: RuleRef | null;
    addresses: string[];
    after: AfterMatch | null;
    address_class: Decision['address_class'] | null;
  };
  const decision: Decision = {
    verdict: o.verdict,
    dispatched: o.dispatched,
    shadow: o.shadow,
    reason: o.reason,
    rule: o.rule,
    addresses: o.addresses,
    trace: [],
    after: o.after,
    ...(o.address_class !== null && o.address_class !== undefined ? { address_class: o.address_class } : {}),
    uncovered: false,
  };
  return {
    conn_id: o.conn_id as string,
    policy_generation: o.policy_generation as number,
    decision,
    tool: o.tool as string | null,
    call_id: o.call_id as string | null,
    session_id: o.session_id as string | null,
    server: o.server as string,
    host: o.host as string,
    port: o.port as number,
    method: o.method as string,
    pinned_address: o.pinned_address as string | null,
    policy_digest: o.policy_digest as string,
    ...(typeof o.detail === 'string' ? { detail: o.detail } : {}),
  };
}

/**
 * `String(ms)` for a duration rounded to the microsecond, as call-events.ts rounds it, without
 * V8's shortest-double formatting: every call's duration is a new number, so it missed the
 * number-string cache and cost about a microsecond of each closed line. Integer arithmetic gives
 * the same text; anything not a whole number of microseconds falls back to `String`.
 */
export function millisText(ms: number): string {
  const us = Math.round(ms * 1000);
  if (!(us >= 0 && us <= Number.MAX_SAFE_INTEGER) || us / 1000 !== ms) return String(ms);
  const whole = Math.floor(us / 1000);
  let fraction = us - whole * 1000;
  if (fraction === 0) return String(whole);
  let digits = 3;
  while (fraction % 10 === 0) {
    fraction /= 10;
    digits--;
  }
  return `${whole}.${String(fraction).padStart(digits, '0')}`;
}

/** One `egress.closed` line. */
export function closedLine(e: ClosedEvent): string {
  return (
    `${infoHead()},"event":"egress.closed","conn_id":${JSON.stringify(e.conn_id)},"bytes_up":${e.bytes_up},"bytes_down":${e.bytes_down}` +
    `,"duration_ms":${millisText(e.duration_ms)},"end":"${e.end}","msg":${JSON.stringify(`closed ${e.conn_id} (${e.end})`)}}\n`
  );
}

export function createEventSink(logger: Logger): EventSink {
  const stream = destinations.get(logger);
  if (stream === undefined) throw new Error('createEventSink needs a logger made by createLogger');
  // Without a batching destination (tests may pass any stream) every line is written at once.
  const batched = stream instanceof BatchedDestination ? stream : null;
  const defer = (line: string): number => {
    if (batched) return batched.defer(line);
    stream.write(line);
    return 0;
  };
  // The feed gets the line the log gets: a decision is formatted once, whoever reads it.
  let tap: DecisionTap | null = null;
  return {
    decision(e) {
      const logged = logger.isLevelEnabled('info');
      if (!logged && tap === null) return;
      const line = decisionLine(e);
      if (logged) stream.write(line);
      tap?.decision(e, line);
    },
    deferredDecision(e) {
      const logged = logger.isLevelEnabled('info');
      if (!logged && tap === null) return 0;
      const line = decisionLine(e);
      tap?.decision(e, line);
      return logged ? defer(line) : 0;
    },
    tapDecisions(next) {
      tap = next;
    },
    ensureWritten(ticket) {
      batched?.ensureWritten(ticket);
    },
    closed(e) {
      if (logger.isLevelEnabled('info')) defer(closedLine(e));
    },
    error(fields, msg) {
      logger.warn({ event: 'egress.error', ...fields }, msg);
    },
    discovered(fields) {
      logger.info({ event: 'egress.discovered', ...fields }, `discovered ${String(fields.host)}:${String(fields.port)}`);
    },
    info(fields, msg) {
      logger.info(fields, msg);
    },
    warn(fields, msg) {
      logger.warn(fields, msg);
    },
    flush() {
      logger.flush();
    },
  };
}
