/**
 * The head of a `CONNECT` request, read straight off the client's socket.
 *
 * Why by hand: a CONNECT through `node:http` builds a parser, an IncomingMessage and its
 * stream state for a request that has no body and ends the HTTP conversation, on every
 * tunnel (S2 in `npm run bench -- datapath` measures the set-up). This reader is for
 * connections that open with `CONNECT ` only: everything else, and every later request on a
 * kept-alive connection, goes to `node:http` (connection-start.ts).
 *
 * Threat: a head this reader accepts and llhttp would read differently (another target,
 * another header value, a header llhttp would not see) lets a client say one thing to the
 * policy and another to anything that re-parses it. So it is strict: it accepts a subset of
 * what llhttp accepts in strict mode (test/proxy/connect-head.test.ts fuzzes the two against
 * each other) and answers everything else with 400. No obs-fold, no bare CR or LF, no
 * whitespace before a colon, no control characters, no body (`Transfer-Encoding` or a
 * non-zero `Content-Length`), HTTP/1.0 and 1.1 only.
 */

export type ConnectHead =
  /** The blank line has not arrived yet (and the head is still within the limit). */
  | { readonly kind: 'incomplete' }
  | { readonly kind: 'too_large' }
  | { readonly kind: 'invalid'; readonly reason: string }
  | {
      readonly kind: 'complete';
      /** The request-target as written (an authority, still to be checked by parseAuthority). */
      readonly target: string;
      /** Names as written and values without surrounding whitespace, as node's `rawHeaders`. */
      readonly rawHeaders: string[];
      /** Bytes of the head, blank line included; what follows is the tunnel's first bytes. */
      readonly length: number;
    };

const CRLFCRLF = Buffer.from('\r\n\r\n');
/** The target is an authority: RFC 3986's characters for one without userinfo (no `@`). */
const REQUEST_LINE = /^CONNECT ([A-Za-z0-9\-._~!$&'()*+,;=:[\]%]+) HTTP\/1\.[01]$/;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Field content: visible ASCII, space, tab and obs-text; no other control character. */
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

const CONNECT_PREFIX = Buffer.from('CONNECT ');

/** Whether `bytes` open a CONNECT request (false while fewer than 8 bytes have arrived). */
export function startsWithConnect(bytes: Buffer): boolean {
  return bytes.length >= CONNECT_PREFIX.length && bytes.compare(CONNECT_PREFIX, 0, CONNECT_PREFIX.length, 0, CONNECT_PREFIX.length) === 0;
}

/** Whether `bytes`, fewer than 8 so far, could still turn out to open with `CONNECT `. */
export function couldBeConnect(bytes: Buffer): boolean {
  return bytes.length < CONNECT_PREFIX.length && CONNECT_PREFIX.compare(bytes, 0, bytes.length, 0, bytes.length) === 0;
}

/**
 * Reads the head in `buffer` (everything the client sent so far). `searchFrom` lets a caller
 * that appends chunks skip the part already searched for the blank line.
 */
export function parseConnectHead(buffer: Buffer, maxBytes: number, searchFrom = 0): ConnectHead {
  const end = buffer.indexOf(CRLFCRLF, Math.max(0, searchFrom - 3));
  if (end === -1) {
    if (buffer.length > maxBytes) return { kind: 'too_large' };
    return earlyError(buffer) ?? { kind: 'incomplete' };
  }
  const length = end + 4;
  if (length > maxBytes) return { kind: 'too_large' };
  const lines = buffer.toString('latin1', 0, end).split('\r\n');
  const requestLine = REQUEST_LINE.exec(lines[0] as string);
  if (!requestLine) return BAD_REQUEST_LINE;
  const rawHeaders: string[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i] as string;
    const colon = line.indexOf(':');
    if (colon <= 0) return { kind: 'invalid', reason: 'malformed header line' };
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) return { kind: 'invalid', reason: 'malformed header name' };
    const value = trimWhitespace(line.slice(colon + 1));
    // A CR or LF left in a line is a bare one: not a line ending here, and not a value byte.
    if (!FIELD_VALUE.test(value)) return { kind: 'invalid', reason: `invalid character in header ${name}` };
    const lower = name.toLowerCase();
    if (lower === 'transfer-encoding' || (lower === 'content-length' && value !== '0')) {
      return { kind: 'invalid', reason: CONNECT_HAS_NO_BODY };
    }
    rawHeaders.push(name, value);
  }
  return { kind: 'complete', target: requestLine[1] as string, rawHeaders, length };
}

/** Why a CONNECT head announcing a body is refused (here, and by server.ts for one node:http read). */
export const CONNECT_HAS_NO_BODY = 'a CONNECT request has no body';

const BAD_REQUEST_LINE = { kind: 'invalid', reason: 'malformed CONNECT request line' } as const;

/**
 * A partial head that can already be refused: a bare LF (llhttp would read `CONNECT x\n` as an
 * HTTP/0.9 request; we never do) or a finished request line that is not one we accept. Saves
 * a client that will never send a valid head the wait for the header timeout.
 */
function earlyError(buffer: Buffer): ConnectHead | null {
  for (let lf = buffer.indexOf(0x0a); lf !== -1; lf = buffer.indexOf(0x0a, lf + 1)) {
    if (lf === 0 || buffer[lf - 1] !== 0x0d) return { kind: 'invalid', reason: 'bare LF in the request head' };
  }
  const lineEnd = buffer.indexOf('\r\n');
  if (lineEnd !== -1 && !REQUEST_LINE.test(buffer.toString('latin1', 0, lineEnd))) return BAD_REQUEST_LINE;
  return null;
}

function trimWhitespace(s: string): string {
  let start = 0;
  let end = s.length;
  while (start < end && (s.charCodeAt(start) === 0x20 || s.charCodeAt(start) === 0x09)) start++;
  while (end > start && (s.charCodeAt(end - 1) === 0x20 || s.charCodeAt(end - 1) === 0x09)) end--;
  return start === 0 && end === s.length ? s : s.slice(start, end);
}
