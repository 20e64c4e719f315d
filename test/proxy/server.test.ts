/**
 * The proxy's listener (src/proxy/server.ts) builds its accepted sockets with full options
 * (src/net/accept.ts) from its first connection on, and serves through them.
 */
import t from 'tap';
import { acceptsWithFullOptions } from '../../src/net/accept.js';
import { startTestProxyFor } from '../helpers/proxy.js';
import { rawRequest } from '../helpers/raw.js';

t.test('the proxy listener accepts with full options once listening', async (t) => {
  const proxy = await startTestProxyFor(t, { policy: 'version: 1\ndefault_verdict: allow\nrules: []\n' });
  t.equal(acceptsWithFullOptions(proxy.running.proxy.server), true);
  const answer = await rawRequest(proxy.port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  t.equal(answer.status, 400, 'a request in origin form through it is answered');
});
