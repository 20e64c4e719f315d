/**
 * The tool call a piece of code runs for. Everything the preload routes looks it up here, so an
 * outbound connection made while a tool call runs carries that call's attribution headers.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes } from 'node:crypto';

export interface ToolCallContext {
  readonly tool: string;
  readonly callId: string;
  readonly sessionId: string;
}

export const toolCalls = new AsyncLocalStorage<ToolCallContext>();

/** The `params._meta` key a gateway uses to hand the proxy-registered call id to the server. */
export const CALL_ID_META_KEY = 'mcp-egress-proxy/call_id';

/** The `params._meta` key a gateway uses to hand the agent's session id to the server. */
export const SESSION_ID_META_KEY = 'mcp-egress-proxy/session_id';

/** A stand-in session id for this server process (stdio has no MCP session id). */
export const processSessionId = randomBytes(16).toString('hex');

/** A call id nobody can guess: 128 random bits. */
export function mintCallId(): string {
  return randomBytes(16).toString('hex');
}

export const headerNames = {
  tool: process.env.MCP_EGRESS_TOOL_HEADER ?? 'x-mcp-tool',
  call: process.env.MCP_EGRESS_CALL_HEADER ?? 'x-mcp-call-id',
  session: process.env.MCP_EGRESS_SESSION_HEADER ?? 'x-mcp-session-id',
};

export function attributionHeaders(ctx: ToolCallContext): Record<string, string> {
  return { [headerNames.tool]: ctx.tool, [headerNames.call]: ctx.callId, [headerNames.session]: ctx.sessionId };
}

/**
 * Runs `fn` as tool call `tool`: every connection it opens through the proxy carries the
 * call's attribution. For code the automatic (stdio) path does not reach, such as an HTTP
 * transport or work started outside a request.
 */
export function runAsToolCall<T>(call: { tool: string; callId?: string; sessionId?: string }, fn: () => T): T {
  return toolCalls.run({ tool: call.tool, callId: call.callId ?? mintCallId(), sessionId: call.sessionId ?? processSessionId }, fn);
}
