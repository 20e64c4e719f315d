/**
 * Per-call context for stdio MCP servers, without touching the MCP SDK (published servers often
 * bundle their own copy of it). The stdio transport reads newline-delimited JSON-RPC from
 * `process.stdin` through a 'data' listener; each listener is wrapped so that a `tools/call`
 * line is delivered inside its own AsyncLocalStorage context, which every promise the tool's
 * handler starts inherits. The response with the same JSON-RPC id on stdout ends the call.
 *
 * Announcing (`announce`): a `tools/call` line is held until the proxy has recorded the call
 * (input after it waits behind it, in order), so the call is history before the tool runs and
 * before any later call can egress. If the announcement fails the call is not run: its answer
 * is a JSON-RPC error naming why (fail closed: an unrecorded read would let a later fetch out).
 */
import { CALL_ID_META_KEY, mintCallId, processSessionId, SESSION_ID_META_KEY, toolCalls } from './context.js';
import type { ToolCallContext } from './context.js';

/** A tools/call line longer than this is delivered but not attributed. */
const MAX_LINE_BYTES = 16 * 1024 * 1024;

type DataListener = (chunk: Buffer | string) => void;

export interface StdioHooks {
  /** Called when a call's response has been written. */
  onCallEnd(ctx: ToolCallContext): void;
  /** Records the call before it runs; null: nothing to wait for. A rejection refuses the call. */
  announce?(ctx: ToolCallContext): Promise<void> | null;
}

/** A header value the proxy accepts as an id (attribute.ts): 1 to 256 visible ASCII characters. */
const HEADER_ID = /^[\x21-\x7e]{1,256}$/;

/** The JSON-RPC error a call gets when it could not be announced. */
const ANNOUNCE_FAILED = -32001;

function parseToolCall(line: string): { id: string | number; ctx: ToolCallContext } | null {
  // Cheap filter, exact on any JSON spelling: "tools" can only be written literally or with a
  // \u escape ("tools\/call" from PHP's json_encode, "tools\u002fcall"), so a line with
  // neither cannot be a tools/call; anything else is parsed.
  if (!line.includes('tools') && !line.includes('\\u')) return null;
  let message: { method?: unknown; id?: unknown; params?: { name?: unknown; _meta?: Record<string, unknown> } };
  try {
    message = JSON.parse(line) as typeof message;
  } catch {
    return null;
  }
  if (message.method !== 'tools/call' || (typeof message.id !== 'string' && typeof message.id !== 'number')) return null;
  const tool = typeof message.params?.name === 'string' ? message.params.name : 'unknown';
  const meta = message.params?._meta;
  const fromGateway = meta?.[CALL_ID_META_KEY];
  const callId = typeof fromGateway === 'string' && fromGateway.length > 0 ? fromGateway : mintCallId();
  // A gateway's agent session (the same across all of an agent's servers), else this process's.
  const session = meta?.[SESSION_ID_META_KEY];
  const sessionId = typeof session === 'string' && HEADER_ID.test(session) ? session : processSessionId;
  return { id: message.id, ctx: { tool, callId, sessionId } };
}

export function installStdioHooks(hooks: StdioHooks): void {
  const open = new Map<string | number, ToolCallContext>();
  const wrappers = new WeakMap<DataListener, DataListener>();
  const stdin = process.stdin;

  const stdout = process.stdout;
  const originalWrite = stdout.write.bind(stdout) as (...args: unknown[]) => boolean;

  // Bytes are delivered as they arrive, unchanged (a string stays a string, a Buffer a Buffer);
  // only a copy of the current line is kept, to recognise a tools/call when its newline arrives,
  // and the segment that completes it is delivered inside the call's context (that is when the
  // SDK parses and dispatches the message). While a call's announcement is in flight, that
  // segment and everything after it wait, in order.
  const wrap = (listener: DataListener): DataListener => {
    let line: Buffer[] = [];
    let lineBytes = 0;
    let oversized = false; // a line past MAX_LINE_BYTES is not recognised (memory stays bounded)
    let waiting = false;
    let held: Array<Buffer | string> = [];
    const feed = (chunk: Buffer | string): void => {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
      const as = (b: Buffer) => (typeof chunk === 'string' ? b.toString('utf8') : b);
      let start = 0;
      let newline: number;
      while ((newline = bytes.indexOf(0x0a, start)) !== -1) {
        const segment = bytes.subarray(start, newline + 1);
        const call = oversized ? null : parseToolCall(Buffer.concat([...line, segment]).toString('utf8'));
        line = [];
        lineBytes = 0;
        oversized = false;
        start = newline + 1;
        const deliver = () => listener(as(segment));
        if (!call) {
          deliver();
          continue;
        }
        const announced = hooks.announce?.(call.ctx) ?? null;
        if (announced === null) {
          open.set(call.id, call.ctx);
          toolCalls.run(call.ctx, deliver);
          continue;
        }
        waiting = true;
        if (start < bytes.length) held.unshift(as(Buffer.from(bytes.subarray(start))));
        announced
          .then(
            () => {
              open.set(call.id, call.ctx);
              toolCalls.run(call.ctx, deliver);
            },
            (err: unknown) => {
              const message = `mcp-egress-proxy: the call was not run: it could not be recorded for the egress proxy's sequence rules (${(err as Error)?.message ?? String(err)})`;
              originalWrite(`${JSON.stringify({ jsonrpc: '2.0', id: call.id, error: { code: ANNOUNCE_FAILED, message } })}\n`);
            },
          )
          .finally(() => {
            waiting = false;
            const queued = held;
            held = [];
            for (const c of queued) wrapper(c);
          });
        return;
      }
      if (start < bytes.length) {
        const rest = bytes.subarray(start);
        lineBytes += rest.length;
        if (lineBytes > MAX_LINE_BYTES) {
          oversized = true;
          line = [];
        } else if (!oversized) line.push(Buffer.from(rest));
        listener(as(rest));
      }
    };
    const wrapper: DataListener = (chunk) => {
      if (waiting) held.push(chunk);
      else feed(chunk);
    };
    wrappers.set(listener, wrapper);
    return wrapper;
  };

  type Listen = (event: string | symbol, listener: (...args: unknown[]) => void) => typeof stdin;
  const originalOn = stdin.on.bind(stdin) as Listen;
  const originalOff = stdin.removeListener.bind(stdin) as Listen;
  const on: Listen = (event, listener) => originalOn(event, event === 'data' ? (wrap(listener) as (...args: unknown[]) => void) : listener);
  const off: Listen = (event, listener) =>
    originalOff(event, ((event === 'data' && wrappers.get(listener)) || listener) as (...args: unknown[]) => void);
  stdin.on = on as typeof stdin.on;
  stdin.addListener = on as typeof stdin.addListener;
  stdin.removeListener = off as typeof stdin.removeListener;
  stdin.off = off as typeof stdin.off;

  // Responses: a line on stdout whose id is an open call ends that call.
  stdout.write = (chunk: unknown, ...rest: unknown[]) => {
    const result = originalWrite(chunk, ...rest);
    if (open.size > 0) {
      const text = typeof chunk === 'string' ? chunk : Buffer.isBuffer(chunk) ? chunk.toString('utf8') : '';
      for (const line of text.split('\n')) {
        if (!line.includes('"id"')) continue;
        try {
          const message = JSON.parse(line) as { id?: string | number; method?: unknown };
          const ctx = message.method === undefined && message.id !== undefined ? open.get(message.id) : undefined;
          if (ctx) {
            open.delete(message.id as string | number);
            hooks.onCallEnd(ctx);
          }
        } catch {
          // not a JSON-RPC line
        }
      }
    }
    return result;
  };
}
