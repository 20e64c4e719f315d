/**
 * A dry run of one call (the `test` command and `POST /v1/test`): the decision the proxy would
 * make, with explanations, without sending traffic. Names in `resolve` are answered from the
 * table; others go to `fallback` (the configured DNS servers). `isSelf` names the proxy's own
 * listeners (src/net/self.ts), so a dry run refuses them as `self` as the live proxy does.
 * The history is given (dry-run-history.ts builds it from `--earlier` / `history`, or the caller
 * passes a live one): a dry run decides with exactly the history it is shown.
 */
import { canonicalHost } from '../net/address.js';
import type { Cidr, IpAddress } from '../net/address.js';
import { createBaseline } from '../net/baseline.js';
import { parseDestinationArg } from '../net/destination.js';
import { staticResolver } from '../net/resolve.js';
import type { NameResolver } from '../net/resolve.js';
import type { CompiledPolicy } from '../policy/compile.js';
import type { Decision, HistoryCall } from '../policy/types.js';
import { decideCall } from './decide-call.js';

export interface DryRunInput {
  readonly destination: string;
  readonly tool?: string | null;
  readonly server?: string | null;
  readonly callId?: string | null;
  /** The decision time (ms since the epoch; default now): the history's times are relative to it. */
  readonly now?: number;
  /** The call's key's history, newest first (default: none). */
  readonly history?: readonly HistoryCall[];
  /** Host → addresses, as written (keys and values canonicalised here). */
  readonly resolve?: ReadonlyArray<readonly [string, readonly string[]]>;
}

export type DryRunResult =
  | { readonly kind: 'decision'; readonly decision: Decision }
  | { readonly kind: 'dns_error'; readonly error: { code: 'dns_error'; kind: string; message: string } }
  | { readonly kind: 'invalid'; readonly error: string };

export function resolveTable(entries: ReadonlyArray<readonly [string, readonly string[]]>): Map<string, IpAddress[]> | { error: string } {
  const table = new Map<string, IpAddress[]>();
  for (const [hostText, ips] of entries) {
    const host = canonicalHost(hostText);
    if (host.kind !== 'name') return { error: `resolve: '${hostText}' is not a host name` };
    const list = table.get(host.host) ?? [];
    for (const text of ips) {
      const ip = canonicalHost(text.trim());
      if (ip.kind !== 'ip') return { error: `resolve: '${text}' is not an IP address` };
      list.push(ip.ip);
    }
    table.set(host.host, list);
  }
  return table;
}

export interface DryRunDeps {
  readonly fallback: NameResolver;
  readonly allowCidrs: readonly Cidr[];
  /** Whether `ip:port` is one of the proxy's own listeners (default: none is). */
  readonly isSelf?: (ip: IpAddress, port: number) => boolean;
}

export async function dryRun(policy: CompiledPolicy, input: DryRunInput, deps: DryRunDeps): Promise<DryRunResult> {
  const target = parseDestinationArg(input.destination);
  if ('error' in target) return { kind: 'invalid', error: `unparsable destination '${input.destination}': ${target.error}` };
  const table = resolveTable(input.resolve ?? []);
  if ('error' in table) return { kind: 'invalid', error: table.error };
  const resolver = staticResolver(table, deps.fallback);
  const ctx = {
    tool: input.tool ?? null,
    server: input.server ?? null,
    port: target.port,
    callId: input.callId ?? null,
    now: input.now ?? Date.now(),
    history: input.history ?? [],
  };
  const outcome = await decideCall(policy, [ctx], target, {
    resolver,
    classify: createBaseline({ allowCidrs: deps.allowCidrs, isSelf: deps.isSelf }),
    explain: true,
  });
  if (outcome.kind === 'dns_error')
    return { kind: 'dns_error', error: { code: 'dns_error', kind: outcome.error.kind, message: outcome.error.message } };
  return { kind: 'decision', decision: outcome.decision };
}
