/**
 * Talking to the admin API from the console: the token the operator typed, kept in this tab's
 * sessionStorage (gone when the tab closes; never a cookie, so no other site's request carries
 * it) and sent as `Authorization: Bearer`. Same origin only: relative URLs, no credentials mode.
 */
const TOKEN_KEY = 'mcp-egress-proxy.token';

export type Role = 'viewer' | 'developer';

export const auth = {
  get token(): string | null {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set token(value: string | null) {
    if (value === null) sessionStorage.removeItem(TOKEN_KEY);
    else sessionStorage.setItem(TOKEN_KEY, value);
  },
};

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly body: Record<string, unknown>,
  ) {
    super(message);
  }
}

export interface ApiOptions {
  json?: unknown;
  ifMatch?: string;
  /** Send without the token (the tokenless probe). */
  anonymous?: boolean;
  signal?: AbortSignal;
}

function headers(options: ApiOptions): Headers {
  const h = new Headers();
  const token = auth.token;
  if (token && !options.anonymous) h.set('authorization', `Bearer ${token}`);
  if (options.json !== undefined) h.set('content-type', 'application/json');
  if (options.ifMatch !== undefined) h.set('if-match', `"${options.ifMatch}"`);
  return h;
}

/** One JSON call; a non-2xx answer throws ApiError with the API's code and message. */
export async function api<T = Record<string, unknown>>(method: string, path: string, options: ApiOptions = {}): Promise<T> {
  const res = await fetch(path, {
    method,
    headers: headers(options),
    body: options.json === undefined ? undefined : JSON.stringify(options.json),
    credentials: 'omit',
    cache: 'no-store',
    signal: options.signal,
  });
  const text = await res.text();
  let body: Record<string, unknown> = {};
  try {
    body = text ? (JSON.parse(text) as Record<string, unknown>) : {};
  } catch {
    body = { text };
  }
  if (!res.ok) {
    const error = (body.error ?? {}) as Record<string, unknown>;
    throw new ApiError(
      res.status,
      String(error.code ?? `http_${res.status}`),
      String(error.message ?? (text.slice(0, 200) || res.statusText)),
      body,
    );
  }
  return body as T;
}

/** A text answer (the draft allow-list YAML). */
export async function apiText(path: string): Promise<string> {
  const res = await fetch(path, { headers: headers({}), credentials: 'omit', cache: 'no-store' });
  const text = await res.text();
  if (!res.ok) {
    let message = text.slice(0, 200);
    try {
      message = String((JSON.parse(text) as { error: { message: string } }).error.message);
    } catch {
      /* not JSON: the text itself */
    }
    throw new ApiError(res.status, `http_${res.status}`, message, {});
  }
  return text;
}

export interface StreamHandlers {
  /** One server-sent event: its `event:` name ('message' when none) and its data. */
  onEvent(name: string, data: string): void;
  /** A comment line (`: ...`), e.g. a heartbeat or a count of dropped events. */
  onComment?(text: string): void;
  onState(state: 'connecting' | 'open' | 'closed' | 'refused', detail?: string): void;
}

/**
 * Reads a `text/event-stream` with fetch (EventSource cannot send an Authorization header),
 * reconnecting after a pause when the stream ends; a 401/403 stops it. Returns a stop function.
 */
export function stream(path: string, handlers: StreamHandlers): () => void {
  const controller = new AbortController();
  let stopped = false;
  /** The last event id seen: a reconnect asks only for what came after it (Last-Event-ID). */
  const last = { id: '' };
  const run = async (): Promise<void> => {
    while (!stopped) {
      handlers.onState('connecting');
      try {
        const h = headers({});
        if (last.id) h.set('last-event-id', last.id);
        const res = await fetch(path, { headers: h, credentials: 'omit', cache: 'no-store', signal: controller.signal });
        if (res.status === 401 || res.status === 403 || res.status === 400 || res.status === 404) {
          let message = `HTTP ${res.status}`;
          try {
            message = String(((await res.json()) as { error: { message: string } }).error.message);
          } catch {
            /* keep the status */
          }
          handlers.onState('refused', message);
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        handlers.onState('open');
        await readEvents(res.body, handlers, last);
      } catch (err) {
        if (stopped) return;
        handlers.onState('closed', (err as Error).message);
      }
      if (!stopped) await new Promise((r) => setTimeout(r, 2000));
    }
  };
  void run();
  return () => {
    stopped = true;
    controller.abort();
  };
}

async function readEvents(body: ReadableStream<Uint8Array>, handlers: StreamHandlers, last: { id: string }): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let name = '';
  let data: string[] = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let nl: number;
    while ((nl = buffer.search(/\r\n|\r|\n/)) !== -1) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        if (data.length > 0) handlers.onEvent(name || 'message', data.join('\n'));
        name = '';
        data = [];
      } else if (line.startsWith(':')) handlers.onComment?.(line.slice(1).trim());
      else {
        const colon = line.indexOf(':');
        const key = colon === -1 ? line : line.slice(0, colon);
        const val = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (key === 'event') name = val;
        else if (key === 'id') last.id = val;
        else if (key === 'data') data.push(val);
      }
    }
  }
}

/**
 * Who am I: no route says, so a harmless probe. `POST /v1/test` with an empty body checks the
 * role first (developer) and then refuses the body (400: no destination) before doing
 * anything: no DNS, no policy change, nothing recorded. 400 means developer; 401/403 viewer.
 */
export async function probeRole(): Promise<Role> {
  try {
    await api('POST', '/v1/test', { json: {} });
    return 'developer';
  } catch (err) {
    if (err instanceof ApiError && err.status === 400) return 'developer';
    return 'viewer';
  }
}
