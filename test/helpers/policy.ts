/** Helpers for policy tests: build policies from YAML, decide calls through the real pipeline. */
import { canonicalHost } from '../../src/net/address.js';
import type { IpAddress } from '../../src/net/address.js';
import { createBaseline } from '../../src/net/baseline.js';
import { parseDestinationArg } from '../../src/net/destination.js';
import { DnsError } from '../../src/net/resolve.js';
import type { NameResolver } from '../../src/net/resolve.js';
import { compilePolicy } from '../../src/policy/compile.js';
import type { CompiledPolicy } from '../../src/policy/compile.js';
import { parsePolicy } from '../../src/policy/schema.js';
import type { CallContext, Decision, HistoryCall } from '../../src/policy/types.js';
import { decideCall } from '../../src/decide/decide-call.js';

export function compileYaml(text: string): CompiledPolicy {
  const result = parsePolicy('test.yaml', text);
  if (!result.spec) throw new Error(result.diagnostics.map((d) => `${d.line}:${d.col} ${d.message}`).join('\n'));
  return compilePolicy(result.spec);
}

export function ip(text: string): IpAddress {
  const h = canonicalHost(text);
  if (h.kind !== 'ip') throw new Error(`not an IP: ${text}`);
  return h.ip;
}

/** A resolver answering from a table, counting the names it was asked. */
export function tableResolver(table: Record<string, string[]>): NameResolver & { queries: string[] } {
  const queries: string[] = [];
  return {
    queries,
    async resolve(name) {
      queries.push(name);
      const answer = table[name];
      if (!answer) throw new DnsError('nxdomain', name, 'ENOTFOUND');
      return { addresses: answer.map(ip), cached: false, durationMs: 0 };
    },
  };
}

export interface CallSpec {
  destination: string;
  resolves?: string[];
  tool?: string | null;
  server?: string | null;
  baseline?: boolean;
  callId?: string | null;
  /** Decision time (default 1,000,000,000,000 ms) and the history, newest first (default none). */
  now?: number;
  history?: HistoryCall[];
}

/** A call context with no history: the defaults of a call outside any sequence. */
export function callContext(call: Partial<CallContext> = {}): CallContext {
  return { tool: null, server: null, port: 443, callId: null, now: NOW, history: [], ...call };
}

/** The decision time the helpers use unless told otherwise. */
export const NOW = 1_000_000_000_000;

/** Decides a call the way the proxy does (pre-resolution, one resolution, baseline, rules). */
export async function decideFor(policy: CompiledPolicy, call: CallSpec): Promise<{ decision: Decision; queries: string[] }> {
  const target = parseDestinationArg(call.destination);
  if ('error' in target) throw new Error(target.error);
  const resolver = tableResolver(target.host.kind === 'name' ? { [target.host.host]: call.resolves ?? ['93.184.216.34'] } : {});
  const outcome = await decideCall(
    policy,
    [
      callContext({
        tool: call.tool ?? null,
        server: call.server ?? null,
        port: target.port,
        callId: call.callId ?? null,
        now: call.now ?? NOW,
        history: call.history ?? [],
      }),
    ],
    target,
    { resolver, classify: call.baseline === false ? () => null : createBaseline(), explain: true },
  );
  if (outcome.kind !== 'decided') throw new Error(outcome.error.message);
  return { decision: outcome.decision, queries: resolver.queries };
}
