/**
 * Explicit histories for dry runs (interface.md: `test --earlier`, `POST /v1/test` `history`):
 * the earlier calls an operator describes, read strictly and turned into the HistoryCall list a
 * decision sees. Every earlier call has the key of the call being tested (its session, else its
 * client identity); `host` or `address` makes it an egress call, dispatched unless said
 * otherwise. Whoever can run a dry run is a developer, but a bad field is still an error that
 * names it (exit 2 / 400), never a silently different history.
 */
import { canonicalHost } from '../net/address.js';
import type { HistoryCall } from '../policy/types.js';

/** A label (tool, client, server, session): 1 to 256 characters, no control characters (C0, DEL, C1). */
export const LABEL = /^\P{Cc}{1,256}$/u;
/** A call id: 1 to 256 visible ASCII characters. */
export const CALL_ID = /^[\x21-\x7e]{1,256}$/;
/** As many calls as the proxy keeps per key (interface.md "Session history"). */
export const MAX_EARLIER = 1024;
/** About a year: older calls can never match (the longest window is a day), but may be described. */
export const MAX_SECONDS_AGO = 31_536_000;

/** One earlier call as described (seconds before the tested call). */
export interface EarlierCall {
  readonly tool: string | null;
  readonly secondsAgo: number;
  readonly server: string | null;
  readonly host: string | null;
  readonly address: string | null;
  readonly callId: string | null;
  /** null: not said (dispatched when it is an egress call). */
  readonly dispatched: boolean | null;
}

type Result<T> = T | { readonly error: string };

const CLI_KEYS = ['tool', 'seconds_ago', 'server', 'host', 'address', 'call_id'] as const;
const JSON_KEYS = ['tool', 'seconds_ago', 'server', 'host', 'address', 'call_id', 'dispatched'] as const;

/** A JSON number (the command line's decimal text is read by parseEarlierArg). */
function secondsAgo(n: unknown, where: string): Result<number> {
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0 || n > MAX_SECONDS_AGO) {
    return { error: `${where}seconds_ago must be a number of seconds from 0 to ${MAX_SECONDS_AGO}` };
  }
  return n;
}

function label(value: unknown, key: string, where: string): Result<string | null> {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string' || !LABEL.test(value))
    return { error: `${where}${key} must be a string of 1 to 256 characters without control characters` };
  return value;
}

function callId(value: unknown, where: string): Result<string | null> {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string' || !CALL_ID.test(value)) return { error: `${where}call_id must be 1 to 256 visible ASCII characters` };
  return value;
}

/** Checks the fields shared by both spellings; `tool` may be null only where the caller allows it. */
function earlier(
  fields: { tool: unknown; seconds_ago: unknown; server?: unknown; host?: unknown; address?: unknown; call_id?: unknown },
  dispatched: boolean | null,
  where: string,
): Result<EarlierCall> {
  if (fields.tool === undefined) return { error: `${where}tool is required` };
  const tool = label(fields.tool, 'tool', where);
  if (typeof tool === 'object' && tool !== null) return tool;
  if (fields.seconds_ago === undefined) return { error: `${where}seconds_ago is required` };
  const ago = secondsAgo(fields.seconds_ago, where);
  if (typeof ago === 'object') return ago;
  const server = label(fields.server, 'server', where);
  if (typeof server === 'object' && server !== null) return server;
  const id = callId(fields.call_id, where);
  if (typeof id === 'object' && id !== null) return id;
  let host: string | null = null;
  if (fields.host !== undefined && fields.host !== null) {
    const h = typeof fields.host === 'string' ? canonicalHost(fields.host) : null;
    if (h === null || h.kind === 'error') return { error: `${where}host must be a host name or an IP address` };
    host = h.host;
  }
  let address: string | null = null;
  if (fields.address !== undefined && fields.address !== null) {
    const a = typeof fields.address === 'string' ? canonicalHost(fields.address) : null;
    if (a === null || a.kind !== 'ip') return { error: `${where}address must be an IP address` };
    address = a.ip.text;
  }
  if (dispatched !== null && host === null && address === null) {
    return { error: `${where}${dispatched ? 'dispatched' : 'refused'} applies only to an egress call: give host or address` };
  }
  return { tool, secondsAgo: ago, server, host, address, callId: id, dispatched };
}

/** `tool=T,seconds_ago=N[,server=S][,host=H][,address=IP][,call_id=C][,refused]` (no commas inside values). */
export function parseEarlierArg(text: string): Result<EarlierCall> {
  const where = `--earlier '${text.slice(0, 100)}': `;
  const fields: Record<string, string> = {};
  let refused = false;
  for (const part of text.split(',')) {
    if (part === 'refused') {
      if (refused) return { error: `${where}refused given twice` };
      refused = true;
      continue;
    }
    const eq = part.indexOf('=');
    const key = eq === -1 ? part : part.slice(0, eq);
    if (eq === -1 || !(CLI_KEYS as readonly string[]).includes(key)) {
      return {
        error: `${where}expected tool=T,seconds_ago=N[,server=S][,host=H][,address=IP][,call_id=C][,refused], not '${part.slice(0, 60)}'`,
      };
    }
    if (Object.hasOwn(fields, key)) return { error: `${where}${key} given twice` };
    fields[key] = part.slice(eq + 1);
  }
  // Plain decimal seconds, at most millisecond precision (no exponents, signs or hex).
  const ago = fields.seconds_ago;
  const seconds = ago !== undefined && /^\d{1,10}(\.\d{1,3})?$/.test(ago) ? Number(ago) : ago;
  return earlier({ ...fields, tool: fields.tool, seconds_ago: seconds }, refused ? false : null, where);
}

/** One item of `POST /v1/test`'s `history`: `{tool, seconds_ago, server?, host?, address?, call_id?, dispatched?}`. */
export function earlierFromJson(value: unknown, index: number): Result<EarlierCall> {
  const where = `history[${index}]: `;
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    return { error: `${where}must be an object {tool, seconds_ago, ...}` };
  const item = value as Record<string, unknown>;
  for (const key of Object.keys(item)) {
    if (!(JSON_KEYS as readonly string[]).includes(key))
      return { error: `${where}unknown field '${key.slice(0, 64)}' (accepted: ${JSON_KEYS.join(', ')})` };
  }
  if (item.dispatched !== undefined && item.dispatched !== null && typeof item.dispatched !== 'boolean')
    return { error: `${where}dispatched must be true or false` };
  return earlier(
    { tool: item.tool, seconds_ago: item.seconds_ago, server: item.server, host: item.host, address: item.address, call_id: item.call_id },
    item.dispatched ?? null,
    where,
  );
}

/**
 * The history a decision at `now` sees, newest first: every earlier call gets the tested call's
 * session id and, unless it names one, its client identity (the same key). An IP-literal host
 * with no address was dialled at that address.
 */
export function historyOf(
  calls: readonly EarlierCall[],
  call: { readonly now: number; readonly sessionId: string | null; readonly server: string | null },
): HistoryCall[] {
  const history = calls.map((e): HistoryCall => {
    const egress = e.host !== null || e.address !== null;
    const dispatched = egress ? e.dispatched !== false : null;
    const hostIp = e.host === null ? null : canonicalHost(e.host);
    const addressText = e.address ?? (hostIp?.kind === 'ip' ? hostIp.host : null);
    const address = dispatched === true && addressText !== null ? canonicalHost(addressText) : null;
    return {
      at: call.now - Math.round(e.secondsAgo * 1000),
      tool: e.tool,
      callId: e.callId,
      server: e.server ?? call.server,
      sessionId: call.sessionId,
      host: e.host,
      address: address?.kind === 'ip' ? address.ip : null,
      dispatched,
    };
  });
  // Newest first, as the engine expects; equal times keep the order given.
  return history
    .map((h, i) => [h, i] as const)
    .sort((a, b) => b[0].at - a[0].at || a[1] - b[1])
    .map(([h]) => h);
}
