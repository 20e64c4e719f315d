/**
 * `GET /v1/events` (viewer): the decision feed as server-sent events (decision-feed.ts holds
 * the bounds). Filters, each at most once, all of them must match: `verdict` (a comma list of
 * allow, deny, audit), `tool`, `server`, `host` (exact; the host canonicalised as destinations
 * are). An unknown key, a repeated key, an empty or malformed value is a 400.
 */
import type { ServerResponse } from 'node:http';
import { canonicalHost } from '../net/address.js';
import { LABEL } from '../decide/dry-run-history.js';
import type { DecisionFeed, FeedMatcher } from '../events/decision-feed.js';
import type { DecisionEvent } from '../events/events.js';
import { badRequest, HttpError } from './http-error.js';
import type { RouteContext } from './policy-routes.js';

export const EVENTS_QUERY_KEYS = ['verdict', 'tool', 'server', 'host'] as const;
const VERDICTS = ['allow', 'deny', 'audit'];

export interface FeedFilter {
  readonly verdicts: ReadonlySet<string> | null;
  readonly tool: string | null;
  readonly server: string | null;
  readonly host: string | null;
}

/** The filter a query asks for (the keys are checked by the admin server: known, once each). */
export function parseFeedFilter(query: URLSearchParams): FeedFilter {
  const label = (key: string): string | null => {
    const v = query.get(key);
    if (v === null) return null;
    if (!LABEL.test(v)) throw badRequest(`${key} must be 1 to 256 characters without control characters`);
    return v;
  };
  let verdicts: Set<string> | null = null;
  const verdict = query.get('verdict');
  if (verdict !== null) {
    verdicts = new Set(verdict.split(','));
    for (const v of verdicts)
      if (!VERDICTS.includes(v)) throw badRequest(`verdict must be a comma-separated list of ${VERDICTS.join(', ')}`);
  }
  let host = label('host');
  if (host !== null) {
    const canonical = canonicalHost(host);
    if (canonical.kind === 'error') throw badRequest(`host: ${canonical.error}`);
    host = canonical.host;
  }
  return { verdicts, tool: label('tool'), server: label('server'), host };
}

/** null without a filter: every decision, and the recorded ones need not be parsed back. */
export function feedMatcher(f: FeedFilter): FeedMatcher {
  if (f.verdicts === null && f.tool === null && f.server === null && f.host === null) return null;
  return (e: DecisionEvent) =>
    (f.verdicts === null || f.verdicts.has(e.decision.verdict)) &&
    (f.tool === null || e.tool === f.tool) &&
    (f.server === null || e.server === f.server) &&
    (f.host === null || e.host === f.host);
}

export function serveEvents(
  ctx: RouteContext,
  res: ServerResponse,
  query: URLSearchParams,
  feed: Pick<DecisionFeed, 'subscribe' | 'subscriberCount' | 'limit'>,
): void {
  ctx.requireRole('viewer');
  const filter = parseFeedFilter(query);
  const lastId = ctx.req.headers['last-event-id'];
  const after = typeof lastId === 'string' && /^[0-9]{1,15}$/.test(lastId) ? Number(lastId) : null;
  if (feed.subscriberCount >= feed.limit) {
    throw new HttpError(503, 'too_many_streams', `at most ${feed.limit} event streams are served at once; close one and retry`);
  }
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-store',
    'x-accel-buffering': 'no',
    connection: 'keep-alive',
  });
  const end = feed.subscribe(res, feedMatcher(filter), after);
  if (end === null) {
    res.end();
    return;
  }
  res.on('close', end);
}
