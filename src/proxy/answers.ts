/**
 * What the proxy answers when it does not forward: a refusal (`firewall_blocked`) or another
 * failure, with the same JSON body shape on CONNECT and plain HTTP (interface.md "Answers").
 * The body names the canonical destination, never the resolved addresses: those go to the
 * event log only. Every answer also carries `x-egress-error`, because clients do not show the
 * body of a refused CONNECT to their callers.
 */
import { STATUS_CODES } from 'node:http';
import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Decision, RuleRef } from '../policy/types.js';

export type ErrorCode =
  | 'firewall_blocked'
  | 'bad_request'
  | 'proxy_auth_required'
  | 'dns_error'
  | 'upstream_unreachable'
  | 'upstream_timeout'
  | 'request_header_too_large'
  | 'request_timeout'
  | 'too_many_tunnels'
  | 'overloaded'
  | 'internal_error'
  | 'state_unavailable'
  | 'announce_not_trusted';

export const STATUS: Record<Exclude<ErrorCode, 'firewall_blocked'>, number> = {
  bad_request: 400,
  proxy_auth_required: 407,
  dns_error: 502,
  upstream_unreachable: 502,
  upstream_timeout: 504,
  request_header_too_large: 431,
  request_timeout: 408,
  too_many_tunnels: 429,
  overloaded: 503,
  internal_error: 500,
  state_unavailable: 503,
  announce_not_trusted: 403,
};

export interface CallLabel {
  readonly tool: string | null;
  readonly callId: string | null;
  readonly host: string | null;
  readonly port: number | null;
}

export interface Answer {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: string;
}

function json(
  status: number,
  code: ErrorCode,
  fields: Record<string, unknown>,
  call: CallLabel,
  extraHeaders: Record<string, string> = {},
): Answer {
  const body = JSON.stringify({
    error: {
      code,
      ...fields,
      tool: call.tool,
      call_id: call.callId,
      destination: call.host === null ? null : { host: call.host, port: call.port },
    },
  });
  return { status, headers: { 'content-type': 'application/json', 'x-egress-error': code, ...extraHeaders }, body };
}

function describeRule(rule: RuleRef): string {
  return rule.label ? `rule ${rule.id} (${rule.label})` : `rule ${rule.id}`;
}

/** The refusal for a decision that was not dispatched. */
export function refusal(decision: Decision, call: CallLabel, denyStatus: number, unattributedWhy?: string): Answer {
  const where = call.host === null ? 'this destination' : `${call.host}:${call.port}`;
  let message: string;
  switch (decision.reason) {
    case 'rule':
      message = `egress to ${where} refused by ${describeRule(decision.rule as RuleRef)}`;
      // A sequence rule: which kind of earlier call it followed (its tool and when, not its id or server).
      if (decision.after) message += ` after an earlier ${decision.after.tool ?? 'unattributed'} call ${decision.after.seconds_ago} s ago`;
      break;
    case 'default':
      message = `egress to ${where} refused: no rule allows it and the default verdict is deny`;
      break;
    case 'ssrf_baseline':
      message = `egress to ${where} refused: the destination is a ${decision.address_class} address (SSRF baseline)`;
      break;
    default:
      message = `egress to ${where} refused: the call is not attributed${unattributedWhy ? ` (${unattributedWhy})` : ''}`;
  }
  const fields: Record<string, unknown> = { reason: decision.reason, message, rule: decision.rule };
  if (decision.address_class) fields.address_class = decision.address_class;
  return json(
    denyStatus,
    'firewall_blocked',
    fields,
    call,
    decision.reason === 'rule' && decision.rule ? { 'x-egress-rule': decision.rule.id } : {},
  );
}

/** Any other failure, with its own code and status. */
export function failure(
  code: Exclude<ErrorCode, 'firewall_blocked'>,
  message: string,
  call: CallLabel,
  extraHeaders: Record<string, string> = {},
): Answer {
  return json(STATUS[code], code, { reason: code, message, rule: null }, call, extraHeaders);
}

export function sendAnswer(res: ServerResponse, answer: Answer, close: boolean): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(answer.status, {
    ...answer.headers,
    'content-length': Buffer.byteLength(answer.body),
    ...(close ? { connection: 'close' } : {}),
  });
  res.end(answer.body);
}

/**
 * How long an answered connection is kept after its answer: time for the answer to leave and
 * for the client to close first. Then the proxy destroys it, whatever the client does
 * (interface.md: answered and refused connections are gone within a second of the answer).
 */
export const ANSWERED_GRACE_MS = 500;

/**
 * Writes an answer on a raw socket (CONNECT before any 200, parser errors, overloaded) and
 * closes it: our side ends now, and the socket is destroyed when the client closes or after
 * `ANSWERED_GRACE_MS`, whichever comes first. Without the second half a client that never
 * closes (or whose close is never read) keeps its socket, and its `max_connections` slot, for
 * good.
 */
export function sendRawAnswer(socket: Duplex, answer: Answer): void {
  if (!socket.writable || socket.destroyed) {
    socket.destroy();
    return;
  }
  const lines = [`HTTP/1.1 ${answer.status} ${STATUS_CODES[answer.status] ?? 'Error'}`];
  for (const [name, value] of Object.entries({
    ...answer.headers,
    'content-length': String(Buffer.byteLength(answer.body)),
    connection: 'close',
  })) {
    lines.push(`${name}: ${value}`);
  }
  // Reading on (and dropping) whatever the client still sends lets its FIN arrive, which ends
  // the socket at once (both sides done); it also keeps unread bytes from turning the final
  // destroy into a reset that could cost the client its answer.
  if (socket.listenerCount('error') === 0) socket.on('error', destroySelf);
  endAnswered(socket, `${lines.join('\r\n')}\r\n\r\n${answer.body}`);
}

/**
 * Ends a connection after its last answer (`last`, or one already written): our side ends now,
 * what the client still sends is read and dropped, and the socket is destroyed when the client
 * closes or after `ANSWERED_GRACE_MS`.
 */
export function endAnswered(socket: Duplex, last?: string): void {
  if (last === undefined) socket.end();
  else socket.end(last);
  socket.resume();
  setTimeout(destroySocket, ANSWERED_GRACE_MS, socket).unref();
}

/** Destroys the socket once the answer has been handed to the kernel (no grace: see callers). */
export function destroyWhenFlushed(socket: Duplex): void {
  if (socket.destroyed) return;
  if (socket.writableFinished) socket.destroy();
  else socket.once('finish', destroySelf);
}

function destroySocket(socket: Duplex): void {
  socket.destroy();
}

function destroySelf(this: Duplex): void {
  this.destroy();
}
