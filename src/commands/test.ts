/**
 * `test POLICY.yaml [--tool] [--server] [--config] [--resolve HOST=IP,...]... [--session ID]
 * [--call-id ID] [--earlier tool=T,seconds_ago=N,...]... DESTINATION`: the decision the proxy
 * would make, without sending traffic, with the history the `--earlier` calls describe (the
 * call's own key; newest first whatever the order given). Prints the decision object.
 * Exit 0 dispatched, 1 blocked (or no usable DNS answer), 2 usage / invalid policy / bad destination.
 */
import { defaultConfig, loadProxyConfig } from '../config/proxy-config.js';
import { formatDiagnostic } from '../config/yaml.js';
import { createResolver } from '../net/resolve.js';
import { canonicalListeners, createSelfCheck } from '../net/self.js';
import { compilePolicy } from '../policy/compile.js';
import { loadPolicyFile } from '../policy/schema.js';
import { dryRun } from '../decide/dry-run.js';
import { CALL_ID, historyOf, LABEL, MAX_EARLIER, parseEarlierArg } from '../decide/dry-run-history.js';
import type { EarlierCall } from '../decide/dry-run-history.js';
import type { CommandIO } from './io.js';

export interface TestOptions {
  readonly tool?: string;
  readonly server?: string;
  readonly config?: string;
  readonly resolve?: readonly string[];
  readonly session?: string;
  readonly callId?: string;
  readonly earlier?: readonly string[];
}

/** The history flags, checked before anything is loaded. */
function readHistoryFlags(options: TestOptions): { earlier: EarlierCall[] } | { error: string } {
  if (options.session !== undefined && !LABEL.test(options.session))
    return { error: '--session must be 1 to 256 characters without control characters' };
  if (options.callId !== undefined && !CALL_ID.test(options.callId))
    return { error: '--call-id must be 1 to 256 visible ASCII characters' };
  const texts = options.earlier ?? [];
  if (texts.length > MAX_EARLIER) return { error: `at most ${MAX_EARLIER} --earlier calls` };
  const earlier: EarlierCall[] = [];
  for (const text of texts) {
    const call = parseEarlierArg(text);
    if ('error' in call) return call;
    earlier.push(call);
  }
  return { earlier };
}

export const USAGE_ERROR = 2;

/** `HOST=IP[,IP...]` arguments as [host, ips] pairs. */
function splitResolveArgs(entries: readonly string[]): Array<[string, string[]]> | { error: string } {
  const out: Array<[string, string[]]> = [];
  for (const entry of entries) {
    const eq = entry.indexOf('=');
    if (eq <= 0) return { error: `--resolve '${entry}': expected HOST=IP[,IP...]` };
    out.push([entry.slice(0, eq), entry.slice(eq + 1).split(',')]);
  }
  return out;
}

export async function runTest(policyFile: string, destination: string, options: TestOptions, io: CommandIO): Promise<number> {
  const flags = readHistoryFlags(options);
  if ('error' in flags) {
    io.err(`error: ${flags.error}\n`);
    return USAGE_ERROR;
  }
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
  const resolve = splitResolveArgs(options.resolve ?? []);
  if ('error' in resolve) {
    io.err(`error: ${resolve.error}\n`);
    return USAGE_ERROR;
  }
  const fallback = createResolver({ servers: config.dns.servers, timeoutMs: config.dns.timeoutMs, maxTtlSeconds: 0 });
  // The listeners that config names (the defaults without --config) are the proxy's own: `self`.
  const listeners = canonicalListeners(
    [config.listen, ...(config.admin.listen ? [config.admin.listen] : [])].map((l) => ({ address: l.host, port: l.port })),
  );
  const isSelf = createSelfCheck({ listeners: () => listeners });
  const now = Date.now();
  const history = historyOf(flags.earlier, { now, sessionId: options.session ?? null, server: options.server ?? null });
  const input = { destination, tool: options.tool, server: options.server, resolve, callId: options.callId ?? null, now, history };
  const result = await dryRun(compilePolicy(loaded.spec), input, { fallback, allowCidrs: config.baseline.allowCidrs, isSelf });
  if (result.kind === 'invalid') {
    io.err(`error: ${result.error}\n`);
    return USAGE_ERROR;
  }
  if (result.kind === 'dns_error') {
    io.out(`${JSON.stringify({ error: result.error })}\n`);
    return 1;
  }
  io.out(`${JSON.stringify(result.decision, null, 2)}\n`);
  return result.decision.dispatched ? 0 : 1;
}
