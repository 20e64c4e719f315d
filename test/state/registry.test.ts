/**
 * The call registry's bounds and expiry (src/attribution/registry.ts): a global cap with a typed
 * refusal, per-client cap, conflicts, and expiry by time order (a stale heap entry of an ended or
 * replaced call never removes the live one). Linear time is shown by `npm run bench -- registry`.
 */
import t from 'tap';
import { CallRegistry } from '../../src/state/registry.js';
import type { RegisteredCall, RegistrationRefused } from '../../src/state/registry.js';
import { parseProxyConfig } from '../../src/config/proxy-config.js';
import { startTestProxyFor } from '../helpers/proxy.js';

function clocked(options: { maxTotal?: number; maxPerClient?: number } = {}) {
  let now = 1_000;
  const registry = new CallRegistry({ defaultTtlMs: 1_000, now: () => now, ...options });
  return { registry, advance: (ms: number) => (now += ms) };
}

const refused = (r: RegisteredCall | RegistrationRefused): RegistrationRefused | null => ('code' in r ? r : null);
const reg = (callId: string, client = 'c1', ttlMs?: number) => ({ callId, tool: 'fetch', client, ...(ttlMs ? { ttlMs } : {}) });

t.test('the global cap refuses with registry_full, and frees as calls end or expire', async (t) => {
  const { registry, advance } = clocked({ maxTotal: 3 });
  for (const [id, client] of [
    ['a', 'c1'],
    ['b', 'c2'],
    ['c', 'c3'],
  ])
    t.equal(refused(registry.register(reg(id as string, client))), null);
  const full = refused(registry.register(reg('d', 'c4')));
  t.match(full, { code: 'registry_full', error: /max_registered_calls/ }, 'over the cap: refused, typed');
  t.equal(registry.size(), 3, 'nothing changed');
  t.equal(refused(registry.register(reg('a', 'c1', 5_000))), null, 'renewing a live id is not a new registration');
  t.ok(registry.end('b'));
  t.equal(refused(registry.register(reg('d', 'c4'))), null, 'an ended call frees its place');
  t.match(refused(registry.register(reg('e', 'c5'))), { code: 'registry_full' });
  advance(1_000);
  t.equal(refused(registry.register(reg('e', 'c5'))), null, 'expired calls are dropped when registering');
  t.equal(registry.size(), 2, "'a' (renewed for 5 s) and 'e'");
  t.ok(registry.find('c1', 'a'));
});

t.test('refusals by kind', async (t) => {
  const { registry } = clocked({ maxPerClient: 2 });
  registry.register(reg('x', 'c1'));
  const cases: Array<[string, ReturnType<typeof reg>, RegistrationRefused['code'] | null]> = [
    ["another client's live id", reg('x', 'c2'), 'conflict'],
    ['same client renews its id', reg('x', 'c1'), null],
    ['second call of c1', reg('y', 'c1'), null],
    ['third call of c1 (limit 2)', reg('z', 'c1'), 'client_limit'],
    ['another client is not limited by c1', reg('z', 'c2'), null],
  ];
  for (const [name, input, code] of cases) t.equal(refused(registry.register(input))?.code ?? null, code, name);
});

t.test("expiry follows each call's own time, and stale entries never remove a live call", async (t) => {
  const { registry, advance } = clocked();
  registry.register(reg('short', 'c1', 100));
  registry.register(reg('long', 'c1', 10_000));
  registry.register(reg('renewed', 'c1', 100));
  registry.register(reg('renewed', 'c1', 10_000)); // replaces: the 100 ms heap entry is stale
  registry.register(reg('ended', 'c1', 100));
  registry.end('ended');
  registry.register(reg('ended', 'c1', 10_000)); // registered again after it ended
  advance(200);
  registry.sweep();
  t.equal(registry.find('c1', 'short'), null, 'expired');
  t.same(
    registry
      .open('c1')
      .map((c) => c.callId)
      .sort(),
    ['ended', 'long', 'renewed'],
  );
  t.equal(registry.size(), 3);
  advance(10_000);
  registry.sweep();
  t.equal(registry.size(), 0);
  t.same(registry.open('c1'), []);
});

t.test('a call registered for one client is not found for another', async (t) => {
  const { registry } = clocked();
  registry.register(reg('x', 'team-a'));
  t.ok(registry.find('team-a', 'x'));
  t.equal(registry.find('team-b', 'x'), null);
  t.same(registry.open('team-b'), []);
});

t.test('register-and-end churn keeps the expiry heap bounded by the live registrations', async (t) => {
  const { registry } = clocked();
  for (let i = 0; i < 20_000; i++) {
    registry.register(reg(`call-${i}`, `c${i % 10}`));
    registry.end(`call-${i}`);
  }
  registry.register(reg('live'));
  const heapLength = (registry as unknown as { heap: unknown[] }).heap.length;
  t.ok(heapLength <= 2 * registry.size() + 1024 + 1, `heap of ${heapLength} for ${registry.size()} live`);
  t.ok(registry.find('c1', 'live'));
});

t.test("limits.max_registered_calls bounds the running proxy's registry (default 100,000)", async (t) => {
  t.equal(parseProxyConfig('proxy.yaml', 'policy: p.yaml\n').config?.limits.maxRegisteredCalls, 100_000);
  const bad = parseProxyConfig('proxy.yaml', 'policy: p.yaml\nlimits: {max_registered_calls: 0}\n');
  t.equal(bad.config, null, 'zero is refused');
  t.match(bad.diagnostics.map((d) => d.message).join('\n'), /max_registered_calls/);
  const proxy = await startTestProxyFor(t, { policy: 'version: 1\n', config: 'limits: {max_registered_calls: 2}' });
  const { registry } = proxy.running;
  t.equal(refused(await registry.register(reg('a', 'c1'))), null);
  t.equal(refused(await registry.register(reg('b', 'c2'))), null);
  t.match(refused(await registry.register(reg('c', 'c3'))), { code: 'registry_full' });
});
