/**
 * `POST /v1/test` (developer): a dry run. `{destination, tool?, server?, call_id?, session_id?,
 * policy?, resolve?, history?}` → the decision the proxy would take, under the serving policy or
 * a draft, with names resolved from `resolve` first and then for real (decide/dry-run.ts). The
 * history is the one given, else the session's live history. Dry runs need the developer role
 * because a draft makes the proxy resolve any name; every field is checked, malformed is a 400.
 */
import type { ProxyConfig } from '../config/proxy-config.js';
import { formatDiagnostic } from '../config/yaml.js';
import type { IpAddress } from '../net/address.js';
import type { NameResolver } from '../net/resolve.js';
import { compilePolicy } from '../policy/compile.js';
import { parsePolicy } from '../policy/schema.js';
import { dryRun } from '../decide/dry-run.js';
import { historyKey } from '../state/types.js';
import { earlierFromJson, historyOf, MAX_EARLIER } from '../decide/dry-run-history.js';
import type { EarlierCall } from '../decide/dry-run-history.js';
import { readHistory } from './calls-routes.js';
import { badRequest, HttpError } from './http-error.js';
import { CALL_ID, onlyKeys, optionalLabel } from './request-fields.js';
import type { AdminRuntime } from './runtime.js';

const MAX_DESTINATION = 2048;
const MAX_RESOLVE_HOSTS = 64;
const MAX_RESOLVE_ADDRESSES = 64;

/** What a dry run needs of the admin server's dependencies. */
export interface DryRunDeps {
  readonly config: ProxyConfig;
  readonly running: AdminRuntime;
  readonly resolver: NameResolver;
  readonly isSelf?: (ip: IpAddress, port: number) => boolean;
}

/** The dry run a request body asks for: the decision, or `{error}` when the destination's name did not resolve. */
export async function testDestination(b: Record<string, unknown>, deps: DryRunDeps): Promise<unknown> {
  const { running, config } = deps;
  onlyKeys(b, ['policy', 'tool', 'server', 'call_id', 'session_id', 'destination', 'resolve', 'history']);
  if (typeof b.destination !== 'string' || b.destination.length === 0 || b.destination.length > MAX_DESTINATION) {
    throw badRequest(`destination is required (a URL or host:port, at most ${MAX_DESTINATION} characters)`);
  }
  const tool = optionalLabel(b, 'tool');
  const server = optionalLabel(b, 'server');
  if (b.policy !== undefined && b.policy !== null && typeof b.policy !== 'string')
    throw badRequest('policy must be a string (the YAML text)');
  const callId = b.call_id === undefined || b.call_id === null ? null : b.call_id;
  if (callId !== null && (typeof callId !== 'string' || !CALL_ID.test(callId)))
    throw badRequest('call_id must be 1 to 256 visible ASCII characters');
  const sessionId = optionalLabel(b, 'session_id');
  let earlier: EarlierCall[] | null = null;
  if (b.history !== undefined && b.history !== null) {
    if (!Array.isArray(b.history) || b.history.length > MAX_EARLIER)
      throw badRequest(
        `history must be a list of at most ${MAX_EARLIER} earlier calls {tool, seconds_ago, server?, host?, address?, call_id?, dispatched?}`,
      );
    earlier = b.history.map((item, index) => {
      const call = earlierFromJson(item, index);
      if ('error' in call) throw badRequest(call.error);
      return call;
    });
  }
  let resolve: Array<[string, string[]]> = [];
  if (b.resolve !== undefined) {
    if (typeof b.resolve !== 'object' || b.resolve === null || Array.isArray(b.resolve))
      throw badRequest('resolve must be an object {host: [ip, ...]}');
    const entries = Object.entries(b.resolve as Record<string, unknown>);
    if (entries.length > MAX_RESOLVE_HOSTS) throw badRequest(`resolve may name at most ${MAX_RESOLVE_HOSTS} hosts`);
    resolve = entries.map(([host, ips]) => {
      const shown = host.slice(0, 64);
      if (!Array.isArray(ips) || !ips.every((i) => typeof i === 'string'))
        throw badRequest(`resolve.${shown} must be a list of IP strings`);
      if (ips.length > MAX_RESOLVE_ADDRESSES) throw badRequest(`resolve.${shown} may list at most ${MAX_RESOLVE_ADDRESSES} addresses`);
      return [host, ips];
    });
  }
  let policy = running.store.current.policy;
  if (typeof b.policy === 'string') {
    const draft = parsePolicy('draft.yaml', b.policy);
    if (!draft.spec)
      throw new HttpError(400, 'invalid_policy', 'the draft policy is not valid', {
        errors: draft.diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic),
      });
    policy = compilePolicy(draft.spec);
  }
  // An explicit history is exactly what the decision sees; without one, a session's live history.
  const now = Date.now();
  const history =
    earlier !== null
      ? historyOf(earlier, { now, sessionId, server })
      : sessionId !== null
        ? await readHistory(running.history, historyKey(sessionId, null))
        : [];
  const input = { destination: b.destination, tool, server, resolve, callId, now, history };
  const result = await dryRun(policy, input, {
    fallback: deps.resolver,
    allowCidrs: config.baseline.allowCidrs,
    isSelf: deps.isSelf,
  });
  if (result.kind === 'invalid') throw badRequest(result.error);
  if (result.kind === 'dns_error') return { error: result.error };
  return result.decision;
}
