import t from 'tap';
import { forwardRequestHeaders, forwardResponseHeaders } from '../../src/proxy/headers.js';

t.test('request headers', async (t) => {
  const raw = [
    'Host',
    'a',
    'Connection',
    'keep-alive, X-Hop',
    'X-Hop',
    '1',
    'Keep-Alive',
    'timeout=5',
    'Proxy-Connection',
    'keep-alive',
    'Proxy-Authorization',
    'Basic x',
    'TE',
    'trailers',
    'Transfer-Encoding',
    'chunked',
    'Upgrade',
    'h2c',
    'Trailer',
    'x',
    'X-MCP-Tool',
    't',
    'Accept',
    '*/*',
    'Cookie',
    'a=1',
    'Cookie',
    'b=2',
    'Expect',
    '100-continue',
  ];
  t.same(forwardRequestHeaders(raw, new Set(['x-mcp-tool'])), ['Accept', '*/*', 'Cookie', 'a=1', 'Cookie', 'b=2']);
});

t.test('response headers', async (t) => {
  const raw = [
    'Content-Type',
    'text/plain',
    'Connection',
    'close, X-Secret',
    'X-Secret',
    's',
    'X-Egress-Error',
    'firewall_blocked',
    'x-egress-rule',
    'r',
    'Proxy-Authenticate',
    'Basic',
    'Transfer-Encoding',
    'chunked',
    'Set-Cookie',
    'a',
    'Set-Cookie',
    'b',
    'Host',
    'kept',
  ];
  t.same(forwardResponseHeaders(raw), ['Content-Type', 'text/plain', 'Set-Cookie', 'a', 'Set-Cookie', 'b', 'Host', 'kept']);
});

t.test('every Connection header counts, whatever its case, and every name it lists is dropped', async (t) => {
  const raw = [
    'CONNECTION',
    ' Close ,X-A',
    'connection',
    'x-b,, keep-alive',
    'Close',
    'c',
    'X-A',
    'a',
    'x-B',
    'b',
    'Keep-Alive',
    'k',
    'X-C',
    'kept',
  ];
  t.same(forwardRequestHeaders(raw, new Set()), ['X-C', 'kept']);
  t.same(forwardResponseHeaders(raw), ['X-C', 'kept']);
  // Only hop-by-hop names listed: nothing else goes.
  t.same(forwardResponseHeaders(['Connection', 'keep-alive', 'Content-Length', '5']), ['Content-Length', '5']);
});
