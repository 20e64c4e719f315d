/**
 * A proxy answer turned into an error a tool can read. Clients hide CONNECT refusals ("fetch
 * failed") and many servers report only a status ("HTTP error: 403", axios's "Request failed
 * with status code 403"), so the model never learns that a policy refused the call, or which
 * rule. Under the preload, an answer the proxy itself gave (it carries `x-egress-error`, which
 * the proxy strips from every upstream response, so an upstream cannot forge one) fails the
 * request with an error whose message names code, reason, rule and destination.
 */

export interface ProxyAnswerBody {
  code: string;
  reason: string | null;
  rule: string | null;
  destination: string | null;
  message: string | null;
}

/** The request failed because the proxy answered instead of the destination. */
export class EgressRefusedError extends Error {
  override readonly name = 'EgressRefusedError';
  /** Like Node's network errors: a stable code to branch on. */
  readonly code = 'EGRESS_REFUSED';
  constructor(
    readonly status: number,
    readonly answer: ProxyAnswerBody,
  ) {
    super(describe(status, answer));
  }
}

function describe(status: number, a: ProxyAnswerBody): string {
  const head = `${a.code}: ${a.reason ?? a.code} rule=${a.rule ?? 'none'} destination=${a.destination ?? 'unknown'}`;
  return `${head} (proxy answered ${status}${a.message ? `: ${a.message}` : ''})`;
}

/** The `x-egress-error` header of a response, if any (header names in any case). */
export function proxyErrorCode(headers: Record<string, string | string[] | undefined>): string | null {
  for (const [name, value] of Object.entries(headers)) {
    if (name.toLowerCase() === 'x-egress-error' && value !== undefined) return Array.isArray(value) ? (value[0] ?? null) : value;
  }
  return null;
}

/** Reads the proxy's JSON answer; falls back to the header's code for a body it cannot parse. */
export function refusalFrom(status: number, code: string, body: string): EgressRefusedError {
  const answer: ProxyAnswerBody = { code, reason: null, rule: null, destination: null, message: null };
  try {
    const parsed = JSON.parse(body) as {
      error?: {
        code?: unknown;
        reason?: unknown;
        message?: unknown;
        rule?: { id?: unknown } | null;
        destination?: { host?: unknown; port?: unknown } | null;
      };
    };
    const e = parsed.error ?? {};
    if (typeof e.code === 'string') answer.code = e.code;
    if (typeof e.reason === 'string') answer.reason = e.reason;
    if (typeof e.message === 'string') answer.message = e.message;
    if (e.rule && typeof e.rule.id === 'string') answer.rule = e.rule.id;
    if (e.destination && typeof e.destination.host === 'string') {
      const host = e.destination.host.includes(':') ? `[${e.destination.host}]` : e.destination.host;
      answer.destination = `${host}:${String(e.destination.port)}`;
    }
  } catch {
    // not the proxy's JSON (another proxy in between?): the header's code is all we know
  }
  return new EgressRefusedError(status, answer);
}

/** Bodies of proxy answers are small; more than this is not one of ours. */
export const MAX_ANSWER_BYTES = 64 * 1024;
