/**
 * Which tool call a connection belongs to. Attribution is a label, not a boundary: a header is
 * whatever the client wrote. Under `trust: header` the three headers are taken as written, and
 * a connection without them gets the calls registered for its client (each is evaluated; the
 * connection is dispatched only if all would be). Under `trust: registered` only call ids the
 * gateway registered for this client count, the tool name comes from the registration, and an
 * unknown or expired call id is refused as `unattributed`. Without any attribution the call is
 * evaluated with no tool, which only `*` globs match.
 *
 * This module is the rule, without I/O: what the headers decide, and what a registration
 * lookup's answer means. The lookup itself (with the histories a decision needs, in one round
 * trip to a shared store) is decision-reads.ts.
 */
import type { RegisteredCall } from '../state/types.js';

export interface Attribution {
  readonly tool: string | null;
  readonly callId: string | null;
  readonly sessionId: string | null;
}

export type AttributionResult =
  | { readonly kind: 'attributed'; readonly calls: readonly Attribution[] }
  | { readonly kind: 'unattributed'; readonly reason: string; readonly callId: string | null }
  | { readonly kind: 'bad_request'; readonly reason: string };

export interface AttributionHeaders {
  readonly tool: string;
  readonly call: string;
  readonly session: string;
}

export type HeaderGetter = (name: string) => string[] | undefined;

const MAX_VALUE = 256;
const VALUE = /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/;

function single(get: HeaderGetter, name: string): string | null | { error: string } {
  const values = get(name);
  if (!values || values.length === 0) return null;
  if (values.length > 1) return { error: `more than one ${name} header` };
  const value = values[0] as string;
  if (value.length > MAX_VALUE || !VALUE.test(value)) return { error: `${name} must be 1 to ${MAX_VALUE} visible ASCII characters` };
  return value;
}

/** What the headers leave to the registry: one call id's registration (`find`), or the client's open calls. */
export interface RegistrationLookup {
  readonly kind: 'lookup';
  /** The call id to find (`trust: registered`), or null for every open call of the client. */
  readonly callId: string | null;
  /** The session of the call when no open call is found (the header's under `trust: header`; none under `registered`). */
  readonly fallbackSessionId: string | null;
}

/** The headers' part of attribution (no I/O): a result, or the registration lookup still needed. */
export function attributionFromHeaders(
  get: HeaderGetter,
  names: AttributionHeaders,
  trust: 'header' | 'registered',
): AttributionResult | RegistrationLookup {
  const tool = single(get, names.tool);
  const callId = single(get, names.call);
  const sessionId = single(get, names.session);
  for (const v of [tool, callId, sessionId]) if (v !== null && typeof v === 'object') return { kind: 'bad_request', reason: v.error };
  const t = tool as string | null;
  const c = callId as string | null;
  const s = sessionId as string | null;
  if (trust === 'registered') {
    if (c !== null) return { kind: 'lookup', callId: c, fallbackSessionId: null };
  } else if (t !== null || c !== null) {
    return { kind: 'attributed', calls: [{ tool: t, callId: c, sessionId: s }] };
  }
  return { kind: 'lookup', callId: null, fallbackSessionId: trust === 'header' ? s : null };
}

/** Attribution by the registration `lookup.callId` names (null: unknown, expired, or another client's). */
export function fromFound(client: string, lookup: RegistrationLookup, call: RegisteredCall | null): AttributionResult {
  if (!call)
    return { kind: 'unattributed', reason: `call id is not registered for client ${client} (unknown or expired)`, callId: lookup.callId };
  return { kind: 'attributed', calls: [{ tool: call.tool, callId: call.callId, sessionId: call.sessionId }] };
}

/** Attribution by the client's open registered calls (every one is evaluated), or none of them. */
export function fromOpen(lookup: RegistrationLookup, calls: readonly RegisteredCall[]): AttributionResult {
  if (calls.length > 0)
    return { kind: 'attributed', calls: calls.map((call) => ({ tool: call.tool, callId: call.callId, sessionId: call.sessionId })) };
  return { kind: 'attributed', calls: [{ tool: null, callId: null, sessionId: lookup.fallbackSessionId }] };
}
