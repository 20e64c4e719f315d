/**
 * `node --import mcp-egress-proxy/register server.js` (or through NODE_OPTIONS): makes an
 * unmodified Node ≥ 20 program send its `fetch`, `http` and `https` requests through the proxy
 * named by HTTPS_PROXY / HTTP_PROXY, honouring NO_PROXY, and tags each MCP tool call.
 *
 * Node 20's built-in fetch ignores the proxy variables (support came in Node 22.21 / 24), so
 * this sets an undici 7 dispatcher as the global one (Node 20's fetch uses it through the shared
 * global symbol), replaces http.globalAgent / https.globalAgent (node-agents.ts), and routes the
 * agents the program builds itself (agent-prototypes.ts).
 *
 * Attribution: while a tool call runs (stdio.ts, or runAsToolCall), connections carry
 * x-mcp-tool / x-mcp-call-id / x-mcp-session-id, and each stdio tool call is announced to the
 * proxy before it runs (announce.ts), so it is session history even if it never egresses. Each call gets its own proxy connections
 * (agents per call for fetch, closed when the call ends; no keep-alive on the global agents;
 * pools keyed per call elsewhere), so two calls in flight are never attributed to each other.
 * Plain HTTP goes to the proxy in absolute form, HTTPS through the preload's own CONNECT
 * tunnels; an answer the proxy gives instead of the destination becomes an error naming the
 * refusal (refusal.ts), also where clients would only say "fetch failed".
 *
 * Fail closed: with no usable proxy variable the program does not start (exit 78), unless
 * MCP_EGRESS_ALLOW_DIRECT=1 says so (proxy-env.ts). Libraries that apply the proxy variables
 * themselves (axios) would proxy around the preload: the variables are moved out of their sight.
 *
 * Scope: code that brings its own undici dispatcher or proxy agent, or opens sockets itself, is
 * not routed, and the program can undo all of this: the preload is not a boundary against a
 * compromised server; containment is (README).
 */
import { ChildProcess } from 'node:child_process';
import { basename } from 'node:path';
import { routeAgentsBuiltByTheProgram } from './agent-prototypes.js';
import { announceCall } from './announce.js';
import { attributionHeaders, toolCalls } from './context.js';
import { installGlobalAgents } from './node-agents.js';
import { EX_CONFIG, hideProxyVariables, readProxySettings, redactProxyUrl } from './proxy-env.js';
import { installStdioHooks } from './stdio.js';
import { AttributingDispatcher, nameRefusalsInFetchErrors } from './undici-routing.js';
import { setGlobalDispatcher } from 'undici';

export { CALL_ID_META_KEY, runAsToolCall, SESSION_ID_META_KEY, toolCalls } from './context.js';
export type { ToolCallContext } from './context.js';
export { EgressRefusedError } from './refusal.js';

const PREFIX = 'mcp-egress-proxy/register';
const INSTALLED = Symbol.for('mcp-egress-proxy.register');

/**
 * Child processes get the standard proxy variables back (a curl or python child then still goes
 * through the proxy), unless the parent set them for that child itself.
 */
function restoreProxyVariablesForChildren(values: Record<string, string>): void {
  const proto = ChildProcess.prototype as unknown as { spawn: (options: { envPairs?: string[] }) => unknown };
  const spawn = proto.spawn;
  proto.spawn = function (this: ChildProcess, options: { envPairs?: string[] }) {
    if (Array.isArray(options?.envPairs)) {
      const present = new Set(options.envPairs.map((p) => p.slice(0, p.indexOf('='))));
      for (const [k, v] of Object.entries(values)) if (!present.has(k)) options.envPairs.push(`${k}=${v}`);
    }
    return spawn.call(this, options);
  };
}

function install(): void {
  const g = globalThis as Record<symbol, unknown>;
  if (g[INSTALLED]) return;
  g[INSTALLED] = true;
  const settings = readProxySettings(process.env);
  if (settings.kind === 'refuse') {
    process.stderr.write(`${PREFIX}: ${settings.message}\n`);
    process.exit(EX_CONFIG);
  }
  if (settings.kind === 'direct') {
    process.stderr.write(
      `${PREFIX}: WARNING: no proxy variable is set and MCP_EGRESS_ALLOW_DIRECT=1: this program runs WITHOUT the egress proxy (nothing is routed, checked or attributed)\n`,
    );
    return;
  }
  // npm itself (wrap -- npx -y some-server): its registry traffic is its own, not a tool's; it
  // reads the proxy variables for it, and passes them on to the server it starts.
  if (/^np[mx](-cli\.js)?$/.test(basename(process.argv[1] ?? ''))) return;
  hideProxyVariables(process.env, settings);
  const forChildren: Record<string, string> = {
    HTTPS_PROXY: settings.https.href,
    HTTP_PROXY: settings.http.href,
    https_proxy: settings.https.href,
    http_proxy: settings.http.href,
  };
  if (settings.noProxy) Object.assign(forChildren, { NO_PROXY: settings.noProxy, no_proxy: settings.noProxy });
  restoreProxyVariablesForChildren(forChildren);

  const route = { http: settings.http, https: settings.https, noProxy: settings.noProxy };
  const dispatcher = new AttributingDispatcher(route, () => {
    const ctx = toolCalls.getStore();
    return ctx ? { callId: ctx.callId, headers: attributionHeaders(ctx) } : null;
  });
  setGlobalDispatcher(dispatcher);
  nameRefusalsInFetchErrors();
  installGlobalAgents(route, () => {
    const ctx = toolCalls.getStore();
    return ctx ? attributionHeaders(ctx) : {};
  });
  routeAgentsBuiltByTheProgram(
    route,
    () => {
      const ctx = toolCalls.getStore();
      return ctx ? attributionHeaders(ctx) : {};
    },
    () => toolCalls.getStore()?.callId ?? null,
  );
  // Every stdio tools/call is announced before it runs (session history for sequence rules);
  // under trust: registered the proxy refuses announcements, and the gateway's registrations count.
  let announcing = true;
  installStdioHooks({
    onCallEnd: (ctx) => dispatcher.endCall(ctx.callId),
    announce: (ctx) => {
      if (!announcing) return null;
      return announceCall(settings.http, ctx).then((result) => {
        if (result === 'not_trusted') {
          announcing = false;
          process.stderr.write(
            `${PREFIX}: the proxy takes no announcements (attribution.trust: registered); calls are history through the gateway's registrations\n`,
          );
        }
      });
    },
  });
  process.stderr.write(
    `${PREFIX}: fetch, http and https routed through ${redactProxyUrl(settings.https)} (https) and ${redactProxyUrl(settings.http)} (http)${settings.noProxy ? `, except NO_PROXY=${settings.noProxy}` : ''}; tool calls on stdio are attributed\n`,
  );
}

install();
