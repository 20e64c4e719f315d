/**
 * `test POLICY.yaml [--tool] [--server] [--config] [--resolve HOST=IP,...]... DESTINATION`:
 * the decision the proxy would make, without sending traffic. Prints the decision object.
 * Exit 0 dispatched, 1 blocked (or no usable DNS answer), 2 usage / invalid policy / bad destination.
 */
import { defaultConfig, loadProxyConfig } from '../config/proxy-config.js';
import { formatDiagnostic } from '../config/yaml.js';
import { canonicalHost } from '../net/address.js';
import type { IpAddress } from '../net/address.js';
import { createBaseline } from '../net/baseline.js';
import { parseDestinationArg } from '../net/destination.js';
import { createResolver, staticResolver } from '../net/resolve.js';
import { compilePolicy } from '../policy/compile.js';
import { loadPolicyFile } from '../policy/schema.js';
import { decideCall } from '../proxy/decision.js';
import type { CommandIO } from './io.js';

export interface TestOptions {
  readonly tool?: string;
  readonly server?: string;
  readonly config?: string;
  readonly resolve?: readonly string[];
}

export const USAGE_ERROR = 2;

/** Parses `HOST=IP[,IP...]` entries into a table keyed by canonical host. */
export function parseResolveArgs(entries: readonly string[]): Map<string, IpAddress[]> | { error: string } {
  const table = new Map<string, IpAddress[]>();
  for (const entry of entries) {
    const eq = entry.indexOf('=');
    if (eq <= 0) return { error: `--resolve '${entry}': expected HOST=IP[,IP...]` };
    const host = canonicalHost(entry.slice(0, eq));
    if (host.kind !== 'name') return { error: `--resolve '${entry}': '${entry.slice(0, eq)}' is not a host name` };
    const ips: IpAddress[] = [];
    for (const text of entry.slice(eq + 1).split(',')) {
      const ip = canonicalHost(text.trim());
      if (ip.kind !== 'ip') return { error: `--resolve '${entry}': '${text}' is not an IP address` };
      ips.push(ip.ip);
    }
    table.set(host.host, [...(table.get(host.host) ?? []), ...ips]);
  }
  return table;
}

export async function runTest(policyFile: string, destination: string, options: TestOptions, io: CommandIO): Promise<number> {
  const loaded = await loadPolicyFile(policyFile);
  for (const d of loaded.diagnostics) io.err(`${formatDiagnostic(d)}\n`);
  if (!loaded.spec) return USAGE_ERROR;

  let config = defaultConfig();
  if (options.config) {
    const result = await loadProxyConfig(options.config);
    for (const d of result.diagnostics) io.err(`${formatDiagnostic(d)}\n`);
    if (!result.config) return USAGE_ERROR;
    config = result.config;
  }
  const target = parseDestinationArg(destination);
  if ('error' in target) {
    io.err(`error: unparsable destination '${destination}': ${target.error}\n`);
    return USAGE_ERROR;
  }
  const table = parseResolveArgs(options.resolve ?? []);
  if ('error' in table) {
    io.err(`error: ${table.error}\n`);
    return USAGE_ERROR;
  }
  const system = createResolver({ servers: config.dns.servers, timeoutMs: config.dns.timeoutMs, maxTtlSeconds: 0 });
  const resolver = staticResolver(table, system);
  const classify = createBaseline({ allowCidrs: config.baseline.allowCidrs });
  const ctx = { tool: options.tool ?? null, server: options.server ?? null, port: target.port };
  const outcome = await decideCall(compilePolicy(loaded.spec), [ctx], target, { resolver, classify, explain: true });
  if (outcome.kind === 'dns_error') {
    io.out(`${JSON.stringify({ error: { code: 'dns_error', kind: outcome.error.kind, message: outcome.error.message } })}\n`);
    return 1;
  }
  io.out(`${JSON.stringify(outcome.decision, null, 2)}\n`);
  return outcome.decision.dispatched ? 0 : 1;
}
