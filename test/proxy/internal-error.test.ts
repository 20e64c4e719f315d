/** A bug of the proxy's while deciding a call is answered 500 internal_error (not bad_request), logged, and forwards nothing. */
import t from 'tap';
import { proxyWithUpstream } from '../helpers/proxy.js';
import { connectRequest, getRequest, rawRequest } from '../helpers/raw.js';

t.test('an internal error is answered 500 internal_error on both paths', async (t) => {
  const { proxy, upstream, target } = await proxyWithUpstream(t, { policy: 'version: 1\ndefault_verdict: allow\n' });
  // A bug: reading the serving policy throws.
  Object.defineProperty(proxy.running.store, 'current', {
    configurable: true,
    get() {
      throw new Error('injected fault');
    },
  });
  for (const [path, request] of [
    ['plain HTTP', getRequest(`http://${target}/x`, target)],
    ['CONNECT', connectRequest(target)],
  ] as const) {
    const r = await rawRequest(proxy.port, request);
    t.equal(r.status, 500, `${path}: 500`);
    t.equal(JSON.parse(r.body).error.code, 'internal_error', `${path}: internal_error`);
    t.equal(r.headers['x-egress-error'], 'internal_error');
    t.ok(r.closedByPeer, `${path}: closed`);
  }
  t.equal(upstream.requests.length + upstream.connections.length, 0, 'nothing forwarded');
  const logged = proxy.events('proxy.internal_error');
  t.equal(logged.length, 2, 'each logged');
  t.match(String(logged[0]?.err), /injected fault/);
});
