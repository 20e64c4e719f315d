/**
 * This host's addresses for per-client limits (red team 28 F2): every address on an interface
 * counts, and one added later counts once the list is older than REFRESH_MS.
 */
import { execFileSync } from 'node:child_process';
import t from 'tap';
import { isHostAddress, REFRESH_MS } from '../../src/net/host-addresses.js';
import { assertLoopbackOnlyNamespace, NETNS_ADDRESSES } from '../helpers/netns.js';

t.test('the addresses on the namespace lo are this host', async (t) => {
  assertLoopbackOnlyNamespace();
  const now = performance.now() + 10 * REFRESH_MS;
  for (const address of ['127.0.0.1', '::1', ...NETNS_ADDRESSES]) t.ok(isHostAddress(address, now), address);
  for (const address of ['10.0.0.7', '93.184.216.36', '2001:db8::1', '::ffff:10.1.2.3']) t.notOk(isHostAddress(address, now), address);
});

t.test('an address added later counts once the list is REFRESH_MS old', async (t) => {
  assertLoopbackOnlyNamespace();
  const added = '10.9.8.7';
  const start = performance.now() + 100 * REFRESH_MS;
  t.notOk(isHostAddress(added, start), 'not yet on lo');
  execFileSync('ip', ['addr', 'add', `${added}/32`, 'dev', 'lo']);
  t.teardown(() => execFileSync('ip', ['addr', 'del', `${added}/32`, 'dev', 'lo']));
  t.notOk(isHostAddress(added, start + REFRESH_MS - 1), 'the list read at the start is kept for REFRESH_MS');
  t.ok(isHostAddress(added, start + REFRESH_MS), 'then read again');
});
