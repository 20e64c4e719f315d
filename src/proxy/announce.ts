/**
 * Announcements on the proxy listener (interface.md "Session history", source 3): a client sends
 * `POST /mcp-egress/v1/calls` in origin form to the proxy itself, with
 * `{"tool", "call_id"?, "session_id"?}` (JSON, at most 4 KiB), and the call becomes history for
 * its key; the answer is `204`. The Node preload announces every `tools/call` as it starts, so a
 * `read_file` that never touches the network is history for a later `fetch` of the same server.
 *
 * Threat and scope: the announcer is the guarded server itself, so an announcement is a label,
 * like an attribution header. Its client identity is taken as for any call (407 with users
 * configured), so it can only write under its own identity; the session id it names is taken
 * as written under `trust: header` (README: a server can add history to any session it names,
 * which can only make sequence rules refuse more, never less). Under `trust: registered`
 * announcements are refused (403 `announce_not_trusted`): only the gateway's registrations
 * count. Bodies are read to 4 KiB at most and validated strictly (400 otherwise); nothing is
 * recorded unless the whole announcement is valid.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { identify } from '../attribution/identity.js';
import type { ProxyConfig } from '../config/proxy-config.js';
import { CALL_ID, LABEL } from '../decide/dry-run-history.js';
import type { HistoryCall } from '../policy/types.js';
import type { HistoryStore } from '../state/types.js';
import { failure, sendAnswer } from './answers.js';
import type { Answer } from './answers.js';

/** The origin-form path the proxy answers itself on its proxy listener. */
export const ANNOUNCE_PATH = '/mcp-egress/v1/calls';
export const MAX_ANNOUNCE_BYTES = 4096;

const KEYS = ['tool', 'call_id', 'session_id'];
const NO_CALL = { tool: null, callId: null, host: null, port: null } as const;

export interface Announcement {
  readonly tool: string;
  readonly callId: string | null;
  readonly sessionId: string | null;
}

/** Whether a request target is the announce endpoint (origin form; anything else stays a proxy request). */
export function isAnnounceTarget(target: string): boolean {
  return target === ANNOUNCE_PATH;
}

/** Reads and validates an announcement's body: the announcement, or the 400 to answer. */
export async function readAnnouncement(req: IncomingMessage, deadlineMs: number): Promise<Announcement | { readonly answer: Answer }> {
  const bad = (message: string) => ({ answer: failure('bad_request', `announcement: ${message}`, NO_CALL) });
  if (req.method !== 'POST') return bad(`use POST ${ANNOUNCE_PATH}`);
  if (!/^application\/json\s*(;|$)/i.test(req.headers['content-type'] ?? '')) return bad('send JSON (content-type: application/json)');
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > MAX_ANNOUNCE_BYTES) return bad(`the body is limited to ${MAX_ANNOUNCE_BYTES} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  // The body has the head's deadline: a stalled or trickled announcement must not hold a slot.
  const deadline = setTimeout(() => req.socket.destroy(), deadlineMs).unref();
  try {
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (size > MAX_ANNOUNCE_BYTES) return bad(`the body is limited to ${MAX_ANNOUNCE_BYTES} bytes`);
      chunks.push(chunk as Buffer);
    }
  } catch {
    return bad('the body could not be read');
  } finally {
    clearTimeout(deadline);
  }
  let body: unknown;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    return bad('the body is not valid JSON');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    return bad('the body must be a JSON object {"tool", "call_id"?, "session_id"?}');
  const b = body as Record<string, unknown>;
  for (const key of Object.keys(b))
    if (!KEYS.includes(key)) return bad(`unknown field '${key.slice(0, 64)}' (accepted: ${KEYS.join(', ')})`);
  if (typeof b.tool !== 'string' || !LABEL.test(b.tool))
    return bad('tool is required: a string of 1 to 256 characters without control characters');
  const callId = b.call_id ?? null;
  if (callId !== null && (typeof callId !== 'string' || !CALL_ID.test(callId)))
    return bad('call_id must be 1 to 256 visible ASCII characters');
  const sessionId = b.session_id ?? null;
  if (sessionId !== null && (typeof sessionId !== 'string' || !LABEL.test(sessionId)))
    return bad('session_id must be a string of 1 to 256 characters without control characters');
  return { tool: b.tool, callId: callId, sessionId: sessionId };
}

/** The refusal under `trust: registered`. */
export function announceNotTrusted(): Answer {
  return failure(
    'announce_not_trusted',
    'announcements are refused under attribution.trust: registered: only calls the gateway registers count as history',
    NO_CALL,
  );
}

/** The history record of an announced call from `client`. */
export function announcedCall(a: Announcement, client: string, at: number): HistoryCall {
  return { at, tool: a.tool, callId: a.callId, server: client, sessionId: a.sessionId, host: null, address: null, dispatched: null };
}

export interface AnnounceDeps {
  readonly config: ProxyConfig;
  readonly history: HistoryStore;
}

/**
 * Answers an announcement on the proxy listener: 407 as for any call, 403 under trust:
 * registered, 400 when malformed, else records it and answers 204 (the connection stays open).
 * Returns what was answered, for the caller's metrics.
 */
export async function answerAnnouncement(req: IncomingMessage, res: ServerResponse, deps: AnnounceDeps): Promise<number> {
  const { config } = deps;
  const authorization = req.headers['proxy-authorization'];
  const identity = identify(authorization, req.socket.remoteAddress, config.auth.users);
  let answer: Answer | null = null;
  if (!identity.ok && identity.code === 'bad_request') {
    answer = failure('bad_request', `announcement: ${identity.reason}`, NO_CALL);
  } else if (!identity.ok) {
    answer = failure('proxy_auth_required', identity.reason, NO_CALL, { 'proxy-authenticate': 'Basic realm="mcp-egress-proxy"' });
  } else if (config.attribution.trust === 'registered') {
    answer = announceNotTrusted();
  } else {
    const read = await readAnnouncement(req, config.limits.headerTimeoutMs);
    if ('answer' in read) answer = read.answer;
    else deps.history.record(announcedCall(read, identity.client, Date.now()));
  }
  if (answer) {
    // The body may be unread (refused before reading): close rather than parse it as a request.
    sendAnswer(res, answer, true);
    req.resume();
    return answer.status;
  }
  res.writeHead(204).end();
  return 204;
}
