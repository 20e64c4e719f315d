/**
 * The event stream (interface.md "Events"): pino JSON lines on stdout, one `egress.decision` per
 * call built from the Decision value, one `egress.closed` when a dispatched call ends. The
 * destination is synchronous by default: an event written is on its way to the file descriptor
 * before the call goes on, so a crash or a signal loses nothing (an asynchronous pino buffer is
 * lost on an unhandled signal). Secrets never reach a line: nothing logs request headers, and
 * the attribution values are labels, not credentials.
 */
import pino from 'pino';
import type { DestinationStream, Logger } from 'pino';
import type { Decision } from '../policy/types.js';

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

export interface EventSink {
  decision(event: DecisionEvent): void;
  closed(event: ClosedEvent): void;
  /** A call that failed before or without a policy decision (bad request, DNS, auth, limits). */
  error(fields: Record<string, unknown>, msg: string): void;
  discovered(fields: Record<string, unknown>): void;
  info(fields: Record<string, unknown>, msg: string): void;
  warn(fields: Record<string, unknown>, msg: string): void;
  flush(): void;
}

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      // Belt and braces: no code path logs these, and if one ever did they would be censored.
      redact: { paths: ['headers.authorization', 'headers["proxy-authorization"]', 'password', 'token'], censor: '[REDACTED]' },
    },
    destination ?? pino.destination({ dest: 1, sync: true }),
  );
}

function decisionMessage(e: DecisionEvent): string {
  const d = e.decision;
  const where = `${e.host}:${e.port}`;
  const by = d.rule ? `rule ${d.rule.id}` : d.reason === 'default' ? 'the default verdict' : d.reason;
  if (d.shadow) return `[shadow] would deny ${where} (${by})`;
  if (!d.dispatched) return `deny ${where} (${by})`;
  return `${d.verdict} ${where} (${by})`;
}

export function createEventSink(logger: Logger): EventSink {
  return {
    decision(e) {
      const d = e.decision;
      logger.info(
        {
          event: 'egress.decision',
          conn_id: e.conn_id,
          policy_generation: e.policy_generation,
          verdict: d.verdict,
          dispatched: d.dispatched,
          shadow: d.shadow,
          reason: d.reason,
          rule: d.rule,
          tool: e.tool,
          call_id: e.call_id,
          session_id: e.session_id,
          server: e.server,
          host: e.host,
          port: e.port,
          method: e.method,
          addresses: d.addresses,
          pinned_address: e.pinned_address,
          address_class: d.address_class ?? null,
          ...(e.detail ? { detail: e.detail } : {}),
        },
        decisionMessage(e),
      );
    },
    closed(e) {
      logger.info({ event: 'egress.closed', ...e }, `closed ${e.conn_id} (${e.end})`);
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
