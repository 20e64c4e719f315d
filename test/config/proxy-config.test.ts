/** config/proxy.yaml validation: defaults, every key, and FILE:LINE:COL errors. */
import t from 'tap';
import { DEFAULTS, defaultConfig, loadProxyConfig, parseListen, parseProxyConfig } from '../../src/config/proxy-config.js';
import { formatDiagnostic } from '../../src/config/yaml.js';

t.test('the shipped config and the defaults', async (t) => {
  const shipped = await loadProxyConfig('config/proxy.yaml');
  t.ok(shipped.config, shipped.diagnostics.map(formatDiagnostic).join('\n'));
  const d = defaultConfig();
  t.same(shipped.config?.listen, d.listen);
  t.match(shipped.config, { denyStatus: 403, attribution: { toolHeader: 'x-mcp-tool', callHeader: 'x-mcp-call-id', sessionHeader: 'x-mcp-session-id', trust: 'header' } });
  t.match(d, { listen: DEFAULTS.listen, admin: { listen: DEFAULTS.adminListen, tokens: [] }, limits: { maxHeaderBytes: 16384 }, shutdownGraceMs: 10000 });
  t.match(shipped.config?.policy, /config\/policy\.yaml$/, 'policy is relative to the config file');
  t.equal((await loadProxyConfig('/nonexistent.yaml')).config, null);
});

t.test('every key', async (t) => {
  const sha = 'a'.repeat(64);
  const r = parseProxyConfig('/etc/mep/proxy.yaml', `listen: "[::1]:0"
policy: ../policies/p.yaml
admin:
  listen: "off"
  tokens: [{name: ops, sha256: ${sha}, role: developer}]
dns: {servers: [127.0.0.1, "127.0.0.1:5353", "[::1]:53"], timeout_ms: 100, cache_max_ttl_seconds: 0}
baseline: {allow_cidrs: [10.0.0.0/8, 192.168.1.1]}
attribution: {tool_header: X-Tool, call_header: X-Call, session_header: X-Session, trust: registered, registration_ttl_ms: 1000}
auth: {users: [{name: team-a, password_sha256: ${sha}}]}
deny_status: 451
limits: {max_header_bytes: 2048, header_timeout_ms: 500, connect_timeout_ms: 500, tunnel_idle_timeout_ms: 1000, max_tunnels_per_client: 3, max_connections: 4}
shutdown_grace_ms: 0
log: {level: debug}
`);
  t.ok(r.config, r.diagnostics.map(formatDiagnostic).join('\n'));
  t.match(r.config, {
    listen: { host: '::1', port: 0 },
    policy: '/etc/policies/p.yaml',
    admin: { listen: null, tokens: [{ name: 'ops', role: 'developer' }] },
    dns: { servers: ['127.0.0.1', '127.0.0.1:5353', '[::1]:53'], timeoutMs: 100, cacheMaxTtlSeconds: 0 },
    attribution: { toolHeader: 'x-tool', trust: 'registered', defaultTtlMs: 1000 },
    auth: { users: [{ name: 'team-a' }] },
    denyStatus: 451,
    limits: { maxHeaderBytes: 2048, maxTunnelsPerClient: 3, maxConnections: 4 },
    shutdownGraceMs: 0,
    log: { level: 'debug' },
  });
  t.same(r.config?.baseline.allowCidrs.map((c) => c.text), ['10.0.0.0/8', '192.168.1.1/32']);
});

t.test('errors at FILE:LINE:COL, all of them', async (t) => {
  const r = parseProxyConfig('c.yaml', `listen: localhost:3128
admin:
  listen: 0.0.0.0:99999
  tokens: [{name: a, sha256: nothex, role: admin}, {name: b}]
dns: {servers: [dns.google, "1.2.3.4:0"]}
baseline: {allow_cidrs: [10.0.0.1/8]}
attribution: {tool_header: "bad header", trust: maybe}
auth: {users: [{name: "a:b", password_sha256: ${'a'.repeat(64)}}, {name: c, password_sha256: XYZ}]}
deny_status: 200
limits: {max_header_bytes: 10, nonsense: 1}
extra: 1
`);
  t.equal(r.config, null);
  const lines = r.diagnostics.map(formatDiagnostic);
  const expected = [
    /^c\.yaml:1:9: error: listen: 'localhost' is not an IP address/,
    /^c\.yaml:3:11: error: admin\.listen: port 99999 is above 65535/,
    /^c\.yaml:4:44: error: role must be one of: viewer, developer/,
    /^c\.yaml:4:30: error: sha256 must be 64 lower-case hex digits|^c\.yaml:4:\d+: error: admin token needs name, sha256 and role/,
    /^c\.yaml:4:\d+: error: admin token needs name, sha256 and role/,
    /^c\.yaml:5:17: error: 'dns\.google' is not a DNS server address/,
    /^c\.yaml:5:29: error: '1\.2\.3\.4:0' is not a DNS server address/,
    /^c\.yaml:6:26: error: '10\.0\.0\.1\/8' has bits set beyond/,
    /^c\.yaml:7:28: error: attribution\.tool_header: 'bad header' is not an HTTP header name/,
    /^c\.yaml:7:49: error: attribution\.trust must be one of: header, registered/,
    /^c\.yaml:8:\d+: error: user name must be non-empty and have no ':'/,
    /^c\.yaml:8:\d+: error: password_sha256 must be 64 lower-case hex digits/,
    /^c\.yaml:9:14: error: deny_status must be an integer from 400 to 599/,
    /^c\.yaml:10:\d+: error: limits: unknown key 'nonsense'/,
    /^c\.yaml:10:28: error: limits\.max_header_bytes must be an integer from 1024 to 1048576/,
    /^c\.yaml:11:1: error: config: unknown key 'extra'/,
  ];
  for (const re of expected) t.ok(lines.some((l) => re.test(l)), `${re} in\n${lines.join('\n')}`);
  const positions = r.diagnostics.map((d) => d.line * 1000 + d.col);
  t.same(positions, [...positions].sort((a, b) => a - b), 'in file order');
});

t.test('listen addresses', async (t) => {
  t.same(parseListen('127.0.0.1:0'), { host: '127.0.0.1', port: 0 });
  t.same(parseListen('[::]:3128'), { host: '::', port: 3128 });
  t.match(parseListen('::1:3128'), { error: /HOST:PORT/ });
  t.match(parseListen('[127.0.0.1]:1'), { error: /not an IP address/ });
  t.match(parseListen('127.0.0.1'), { error: /HOST:PORT/ });
});

t.test('admin.allowed_hosts: names or IP literals, canonical; no ports, no wildcards', async (t) => {
  const ok = parseProxyConfig('c.yaml', 'admin:\n  allowed_hosts: [Egress-Admin.Internal, "egress-admin.internal.", 10.0.0.5, "::1", "[fd00::1]"]\n');
  t.ok(ok.config, ok.diagnostics.map(formatDiagnostic).join('\n'));
  t.same(ok.config?.admin.allowedHosts, ['egress-admin.internal', 'egress-admin.internal', '10.0.0.5', '::1', 'fd00::1']);
  t.same(defaultConfig().admin.allowedHosts, [], 'none by default');
  const bad = parseProxyConfig('c.yaml', 'admin:\n  allowed_hosts: ["*.example.com", "admin.example:9901", "[::1]:9901", "a b", ""]\n');
  t.equal(bad.config, null);
  t.same(bad.diagnostics.map(formatDiagnostic), [
    "c.yaml:2:19: error: admin.allowed_hosts: '*.example.com': wildcards are not accepted (list each name)",
    "c.yaml:2:36: error: admin.allowed_hosts: 'admin.example:9901': give the name without a port (any port of a listed name is accepted)",
    "c.yaml:2:58: error: admin.allowed_hosts: '[::1]:9901': give the name without a port (any port of a listed name is accepted)",
    "c.yaml:2:72: error: admin.allowed_hosts: 'a b' is not a host name or IP address (host contains control characters or spaces)",
    "c.yaml:2:79: error: admin.allowed_hosts: '' is not a host name or IP address (empty host)",
  ]);
});

t.test('attribution.trust: registered needs admin.tokens and auth.users, each named at the trust key', async (t) => {
  const sha = 'a'.repeat(64);
  const tokens = `admin: {tokens: [{name: gw, sha256: ${sha}, role: developer}]}\n`;
  const users = `auth: {users: [{name: team-a, password_sha256: ${sha}}]}\n`;
  const neither = parseProxyConfig('c.yaml', 'attribution:\n  trust: registered\n');
  t.equal(neither.config, null);
  t.same(neither.diagnostics.map(formatDiagnostic), [
    'c.yaml:2:10: error: attribution.trust: registered needs admin.tokens (a developer token for the gateway); none are configured',
    'c.yaml:2:10: error: attribution.trust: registered needs auth.users (client identities the server cannot choose); none are configured',
  ]);
  const noUsers = parseProxyConfig('c.yaml', `${tokens}attribution: {trust: registered}\n`);
  t.same(noUsers.diagnostics.map(formatDiagnostic), ['c.yaml:2:22: error: attribution.trust: registered needs auth.users (client identities the server cannot choose); none are configured']);
  const noTokens = parseProxyConfig('c.yaml', `${users}attribution: {trust: registered}\n`);
  t.same(noTokens.diagnostics.map(formatDiagnostic), ['c.yaml:2:22: error: attribution.trust: registered needs admin.tokens (a developer token for the gateway); none are configured']);
  const both = parseProxyConfig('c.yaml', `${tokens}${users}attribution: {trust: registered}\n`);
  t.ok(both.config, both.diagnostics.map(formatDiagnostic).join('\n'));
  t.ok(parseProxyConfig('c.yaml', 'attribution: {trust: header}\n').config, 'trust: header needs neither');
});

t.test('admin.listen off loopback needs admin.tokens: a config error with its position', async (t) => {
  for (const address of ['0.0.0.0:9901', '10.0.0.5:9901', '"[::]:9901"', '"[fd00::1]:9901"']) {
    const r = parseProxyConfig('c.yaml', `admin:\n  listen: ${address}\n`);
    t.equal(r.config, null, address);
    t.match(r.diagnostics.map(formatDiagnostic), [/^c\.yaml:2:11: error: admin\.listen: .* is not a loopback address, and no admin\.tokens are configured/], address);
  }
  for (const address of ['127.0.0.1:9901', '127.0.0.2:0', '"[::1]:9901"', 'off']) {
    const r = parseProxyConfig('c.yaml', `admin:\n  listen: ${address}\n`);
    t.ok(r.config, `${address}: ${r.diagnostics.map(formatDiagnostic).join('; ')}`);
  }
  const withToken = parseProxyConfig('c.yaml', `admin:\n  listen: 0.0.0.0:9901\n  tokens: [{name: ops, sha256: ${'a'.repeat(64)}, role: viewer}]\n`);
  t.ok(withToken.config, 'with a token, any address');
});

t.test('state: store, redis_url, key_prefix, timeout_ms', async (t) => {
  t.same(defaultConfig().state, { store: 'memory', redisUrl: 'redis://127.0.0.1:6379/0', keyPrefix: 'mcp-egress:', timeoutMs: 250 }, 'defaults');
  const good = parseProxyConfig('p.yaml', 'state: {store: redis, redis_url: "rediss://:pw@redis.internal:6380/2", key_prefix: "fleet-a:", timeout_ms: 50}\n');
  t.same(good.config?.state, { store: 'redis', redisUrl: 'rediss://:pw@redis.internal:6380/2', keyPrefix: 'fleet-a:', timeoutMs: 50 });
  const cases: Array<[string, RegExp]> = [
    ['state: {store: etcd}', /^p\.yaml:1:16: error: .*state\.store.*memory.*redis/],
    ['state: {store: redis, redis_url: "http://:pw@h:6379"}', /^p\.yaml:1:34: error: state\.redis_url: the scheme must be redis: or rediss:/],
    ['state: {store: redis, redis_url: "redis://:pw@h:6379/99"}', /^p\.yaml:1:34: error: state\.redis_url: the path must be a database number/],
    ['state: {store: redis, redis_url: "redis://:pw@h/0?x=1"}', /error: state\.redis_url: no query/],
    ['state: {store: redis, redis_url: "not a url pw"}', /error: state\.redis_url: not a URL/],
    ['state: {store: redis, key_prefix: "a b"}', /^p\.yaml:1:35: error: state\.key_prefix/],
    ['state: {timeout_ms: 0}', /^p\.yaml:1:21: error: .*state\.timeout_ms/],
    ['state: {store: redis, port: 1}', /^p\.yaml:1:23: error: .*port/],
  ];
  for (const [text, expected] of cases) {
    const r = parseProxyConfig('p.yaml', `${text}\n`);
    t.equal(r.config, null, text);
    t.match(r.diagnostics.map(formatDiagnostic).join('\n'), expected, text);
  }
  for (const [text] of cases.slice(1, 5)) {
    t.notMatch(parseProxyConfig('p.yaml', `${text}\n`).diagnostics.map(formatDiagnostic).join('\n'), /pw/, 'an error never repeats the URL (it may hold a password)');
  }
  const ignored = parseProxyConfig('p.yaml', 'state: {redis_url: "redis://h:6379/0"}\n');
  t.ok(ignored.config, 'redis_url with store memory is accepted');
  t.match(ignored.diagnostics.map(formatDiagnostic).join('\n'), /^p\.yaml:1:20: warning: state\.redis_url is ignored: state\.store is memory/);
});
