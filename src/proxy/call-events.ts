/**
 * The lines a call ends with, built from what admission decided: its decision line (interface.md
 * "Events": `egress.decision`, under the call's own `conn_id`, with the deciding generation and
 * digest) and its closed line (bytes each way, duration, how it ended), plus the deny decision
 * recorded for a call refused before the policy could decide it (unattributed, or the state
 * store unavailable). Only construction: admission.ts writes the lines and records the history.
 */
import type { Attribution } from '../attribution/attribute.js';
import type { Target } from '../net/destination.js';
import type { Decision, DecisionReason } from '../policy/types.js';
import type { ClosedEvent, DecisionEvent, EndReason } from '../events/events.js';

/** What a decision line says of a call (admission.ts's `Admitted` has all of it). */
export interface DecidedCall {
  readonly connId: string;
  readonly client: string;
  readonly call: Attribution;
  readonly generation: number;
  /** The deciding policy's `policy_digest`. */
  readonly digest: string;
  readonly decision: Decision;
  readonly target: Target;
  readonly method: string;
}

/** A deny the policy did not decide: refused before any rule was consulted, nothing resolved or dialled. */
export function refusedBeforeDecision(reason: DecisionReason): Decision {
  return {
    verdict: 'deny',
    dispatched: false,
    shadow: false,
    reason,
    rule: null,
    after: null,
    addresses: [],
    trace: [],
    uncovered: false,
  };
}

/** The `egress.decision` line: `pinned` is the address dialled (null when refused), `detail` extra words for a refusal. */
export function decisionLine(a: DecidedCall, pinned: string | null, detail?: string): DecisionEvent {
  return {
    conn_id: a.connId,
    policy_generation: a.generation,
    decision: a.decision,
    tool: a.call.tool,
    call_id: a.call.callId,
    session_id: a.call.sessionId,
    server: a.client,
    host: a.target.host.host,
    port: a.target.port,
    method: a.method,
    pinned_address: pinned,
    policy_digest: a.digest,
    ...(detail ? { detail } : {}),
  };
}

/** The `egress.closed` line: `started` is the `performance.now()` when the call was taken, the duration in ms to 3 decimals. */
export function closedLine(connId: string, up: number, down: number, started: number, end: EndReason): ClosedEvent {
  const durationMs = Math.round((performance.now() - started) * 1000) / 1000;
  return { conn_id: connId, bytes_up: up, bytes_down: down, duration_ms: durationMs, end };
}
