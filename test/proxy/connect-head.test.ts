import t from 'tap';
import { couldBeConnect, parseConnectHead, startsWithConnect } from '../../src/proxy/connect-head.js';

/**
 * The reference: llhttp itself, as node:http runs it (strict mode, the same header limit).
 * `process.binding` is deprecated but is the only way to drive node's own parser on bytes
 * without a socket; if a Node release removes it this test fails rather than passing empty.
 */
interface LlhttpVerdict {
  readonly error?: string;
  readonly incomplete?: boolean;
  readonly method?: string;
  readonly url?: string;
  readonly major?: number;
  readonly minor?: number;
  readonly headers?: string[];
  readonly consumed?: number;
}
const binding = (process as unknown as { binding(name: string): Record<string, unknown> }).binding('http_parser');
const HTTPParser = binding.HTTPParser as {
  new (): Record<number, unknown> & {
    initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
    execute(b: Buffer): number | (Error & { code: string });
  };
  REQUEST: number;
  kOnHeaders: number;
  kOnHeadersComplete: number;
  kOnBody: number;
  kOnMessageComplete: number;
  kOnExecute: number;
};
const METHODS = binding.methods as string[];

function llhttp(bytes: Buffer, maxHeaderSize: number): LlhttpVerdict {
  const parser = new HTTPParser();
  const headers: string[] = [];
  // Past 32 headers llhttp hands the URL and the first headers over early (as node:http joins them).
  let urlSoFar = '';
  let verdict: LlhttpVerdict | null = null;
  parser[HTTPParser.kOnHeaders] = (h: string[], url: string | undefined) => {
    headers.push(...h);
    urlSoFar += url ?? '';
  };
  parser[HTTPParser.kOnHeadersComplete] = (
    major: number,
    minor: number,
    h: string[] | undefined,
    method: number,
    url: string | undefined,
  ) => {
    verdict = { major, minor, headers: [...headers, ...(h ?? [])], method: METHODS[method], url: urlSoFar + (url ?? '') };
    return 0;
  };
  parser[HTTPParser.kOnBody] = () => {};
  parser[HTTPParser.kOnMessageComplete] = () => {};
  parser[HTTPParser.kOnExecute] = () => {};
  parser.initialize(HTTPParser.REQUEST, {}, maxHeaderSize, 0);
  const consumed = parser.execute(bytes);
  if (consumed instanceof Error) return { error: consumed.code };
  return verdict ? { ...(verdict as LlhttpVerdict), consumed } : { incomplete: true };
}

const MAX = 16 * 1024;

/** What real clients send (curl, undici, https-proxy-agent, Python's http.client). */
const REAL_HEADS = [
  'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nUser-Agent: curl/7.88.1\r\nProxy-Connection: Keep-Alive\r\n\r\n',
  'CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\nconnection: close\r\nx-mcp-tool: fetch\r\nx-mcp-call-id: c-1\r\n\r\n',
  'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic YWdlbnQ6c2VjcmV0\r\nConnection: close\r\n\r\n',
  'CONNECT [2001:db8::1]:8443 HTTP/1.0\r\nHost: [2001:db8::1]:8443\r\n\r\n',
  'CONNECT 127.0.0.1:443 HTTP/1.1\r\n\r\n',
  // More headers than llhttp hands over in one callback (32): the list must still match.
  `CONNECT example.com:443 HTTP/1.1\r\n${Array.from({ length: 40 }, (_, i) => `X-H${i}:\t v${i} \r\n`).join('')}\r\n`,
];

t.test("real clients' heads are read exactly as llhttp reads them", async (t) => {
  for (const head of REAL_HEADS) {
    const bytes = Buffer.from(`${head}\x16\x03\x01`, 'latin1');
    const ours = parseConnectHead(bytes, MAX);
    const ref = llhttp(bytes, MAX);
    t.equal(ours.kind, 'complete', head);
    if (ours.kind !== 'complete') continue;
    t.same(
      { target: ours.target, headers: ours.rawHeaders, length: ours.length },
      { target: ref.url, headers: ref.headers, length: ref.consumed },
      head,
    );
    t.equal(ref.method, 'CONNECT');
  }
});

t.test('a head arriving in pieces is incomplete until its blank line', async (t) => {
  const bytes = Buffer.from(REAL_HEADS[0] as string, 'latin1');
  for (let cut = 0; cut < bytes.length; cut++)
    t.same(parseConnectHead(bytes.subarray(0, cut), MAX, Math.max(0, cut - 7)), { kind: 'incomplete' }, `cut at ${cut}`);
  t.equal(
    parseConnectHead(bytes, MAX, bytes.length - 2).kind,
    'complete',
    'searching from near the end still finds a blank line split across chunks',
  );
});

t.test('size limit: over the limit with or without a blank line', async (t) => {
  const big = `CONNECT a.example:443 HTTP/1.1\r\nX-Pad: ${'a'.repeat(MAX)}\r\n\r\n`;
  t.same(parseConnectHead(Buffer.from(big), MAX), { kind: 'too_large' });
  t.same(parseConnectHead(Buffer.from(big.slice(0, MAX + 10)), MAX), { kind: 'too_large' }, 'no blank line yet, already too long');
  const exact = Buffer.from(`CONNECT a.example:443 HTTP/1.1\r\nX: y\r\n\r\n`);
  t.equal(parseConnectHead(exact, exact.length).kind, 'complete');
  t.equal(parseConnectHead(exact, exact.length - 1).kind, 'too_large');
});

t.test('refused heads, each for its reason', async (t) => {
  const rows: Array<[string, RegExp]> = [
    ['CONNECT a:1 HTTP/2.0\r\n\r\n', /request line/],
    ['CONNECT a:1  HTTP/1.1\r\n\r\n', /request line/],
    ['CONNECT  a:1 HTTP/1.1\r\n\r\n', /request line/],
    ['CONNECT a:1 HTTP/1.1 \r\n\r\n', /request line/],
    ['CONNECT a:1\r\n\r\n', /request line/],
    ['CONNECT a\x7f:1 HTTP/1.1\r\n\r\n', /request line/],
    ['CONNECT a:1 HTTP/1.1\r\n folded: x\r\n\r\n', /header name/],
    ['CONNECT a:1 HTTP/1.1\r\nX : y\r\n\r\n', /header name/],
    ['CONNECT a:1 HTTP/1.1\r\n: y\r\n\r\n', /header line/],
    ['CONNECT a:1 HTTP/1.1\r\nnocolon\r\n\r\n', /header line/],
    ['CONNECT a:1 HTTP/1.1\r\nX: a\nb\r\n\r\n', /invalid character/],
    ['CONNECT a:1 HTTP/1.1\r\nX: a\rb\r\n\r\n', /invalid character/],
    ['CONNECT a:1 HTTP/1.1\r\nX: a\x00b\r\n\r\n', /invalid character/],
    ['CONNECT a:1 HTTP/1.1\r\nX: a\x7fb\r\n\r\n', /invalid character/],
    ['CONNECT a:1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n', /no body/],
    ['CONNECT a:1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde', /no body/],
  ];
  for (const [head, reason] of rows) {
    const r = parseConnectHead(Buffer.from(head, 'latin1'), MAX);
    t.equal(r.kind, 'invalid', JSON.stringify(head));
    if (r.kind === 'invalid') t.match(r.reason, reason, JSON.stringify(head));
  }
  t.equal(
    parseConnectHead(Buffer.from('CONNECT a:1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n'), MAX).kind,
    'complete',
    'an explicit empty body is fine',
  );
});

t.test('only a connection that opens with "CONNECT " takes this reader', async (t) => {
  t.ok(startsWithConnect(Buffer.from('CONNECT a:1 HTTP/1.1\r\n')));
  for (const s of ['CONNECT', 'connect a:1 HTTP/1.1', 'CONNECTX a', 'GET http://a/ HTTP/1.1', '\r\nCONNECT a:1', ' CONNECT a'])
    t.notOk(startsWithConnect(Buffer.from(s)), s);
  for (const s of ['', 'C', 'CONN', 'CONNECT']) t.ok(couldBeConnect(Buffer.from(s)), `${JSON.stringify(s)} may still be a CONNECT`);
  for (const s of ['X', 'CONX', 'connect', 'CONNECT ', 'CONNECT a'])
    t.notOk(couldBeConnect(Buffer.from(s)), `${JSON.stringify(s)} is decided`);
});

/** A small seeded PRNG, so a failure names a case that can be replayed. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = s;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** Bytes that sit on the edges of HTTP's grammar. */
const ALPHABET = [
  '\r',
  '\n',
  '\r\n',
  '\t',
  ' ',
  ':',
  '\x00',
  '\x01',
  '\x0b',
  '\x0c',
  '\x7f',
  '\x80',
  '\xff',
  'a',
  'Z',
  '0',
  '/',
  '[',
  ']',
  '%',
  ',',
  '"',
  '(',
  '@',
  '\\',
  '=',
  ';',
  '\r\n\r\n',
  '\r\n ',
  'HTTP/1.1',
  'CONNECT ',
  '<',
  '>',
  '{',
  '}',
  '|',
  '^',
  '`',
  '#',
  '?',
  '&',
  "'",
  '~',
  '!',
  '*',
];

t.test('differential fuzz: whatever this reader accepts, llhttp reads the same way', async (t) => {
  const seed = Number(process.env.CONNECT_HEAD_SEED ?? 20261122);
  const cases = Number(process.env.CONNECT_HEAD_CASES ?? 30_000);
  const random = prng(seed);
  const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)] as T;
  let accepted = 0;
  let refusedByBoth = 0;
  let stricter = 0;
  const mismatches: string[] = [];
  for (let n = 0; n < cases; n++) {
    let text = pick(REAL_HEADS);
    const edits = 1 + Math.floor(random() * 4);
    for (let e = 0; e < edits; e++) {
      const at = Math.floor(random() * text.length);
      const op = random();
      if (op < 0.4) text = text.slice(0, at) + pick(ALPHABET) + text.slice(at);
      else if (op < 0.7) text = text.slice(0, at) + pick(ALPHABET) + text.slice(at + 1);
      else text = text.slice(0, at) + text.slice(at + 1 + Math.floor(random() * 3));
    }
    const bytes = Buffer.from(text, 'latin1');
    const ours = parseConnectHead(bytes, MAX);
    const ref = llhttp(bytes, MAX);
    if (ours.kind === 'complete') {
      accepted++;
      const same =
        ref.method === 'CONNECT' &&
        ref.major === 1 &&
        (ref.minor === 0 || ref.minor === 1) &&
        ref.url === ours.target &&
        ref.consumed === ours.length &&
        JSON.stringify(ref.headers) === JSON.stringify(ours.rawHeaders);
      if (!same) mismatches.push(`${JSON.stringify(text)} ours=${JSON.stringify(ours)} llhttp=${JSON.stringify(ref)}`);
    } else if (ours.kind === 'invalid' || ours.kind === 'too_large') {
      if (ref.error) refusedByBoth++;
      else stricter++;
    } else if (!ref.incomplete && !ref.error) {
      // We wait for more where llhttp would already act: only harmless if it is not CONNECT.
      if (ref.method === 'CONNECT')
        mismatches.push(`incomplete for us, complete for llhttp: ${JSON.stringify(text)} ${JSON.stringify(ref)}`);
    }
  }
  t.same(mismatches.slice(0, 5), [], `seed ${seed}: no head is read differently`);
  t.ok(accepted > cases / 20, `a fair share of mutated heads is still accepted (${accepted})`);
  t.ok(refusedByBoth > cases / 20, `and a fair share refused by both (${refusedByBoth}); stricter than llhttp on ${stricter}`);
});
