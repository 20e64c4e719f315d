/**
 * Checks shared by the admin routes that take a call or a client in their body or query
 * (calls-routes.ts, test-route.ts): the call id's shape, optional label fields, the accepted
 * keys of a body, and a client named as the data path names it. Each failure is a 400 with a
 * message saying what was expected; nothing here reads state.
 */
import { canonicalHost } from '../net/address.js';
import { LABEL } from '../decide/dry-run-history.js';
import { badRequest } from './http-error.js';

export const CALL_ID = /^[\x21-\x7e]{1,256}$/;

/** An optional label field: absent/null, or a string of 1 to 256 characters without control characters. */
export function optionalLabel(b: Record<string, unknown>, key: string): string | null {
  const v = b[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== 'string' || !LABEL.test(v))
    throw badRequest(`${key} must be a string of 1 to 256 characters without control characters`);
  return v;
}

export function onlyKeys(b: Record<string, unknown>, allowed: readonly string[]): void {
  for (const key of Object.keys(b))
    if (!allowed.includes(key)) throw badRequest(`unknown field '${key.slice(0, 64)}' (accepted: ${allowed.join(', ')})`);
}

/** A client as the data path names it: an IP address canonical, a user name as written. */
export function canonicalClient(client: string): string {
  const c = canonicalHost(client);
  return c.kind === 'ip' ? c.host : client;
}
