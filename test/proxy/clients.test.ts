/**
 * Real clients through the real proxy: curl, undici 7's ProxyAgent, http-proxy-agent,
 * https-proxy-agent and Python requests, over plain HTTP and CONNECT (TLS end to end), with
 * attribution headers, against loopback upstreams named through a loopback DNS server.
 */
import { execFile } from 'node:child_process';
import { get as httpGet } from 'node:http';
import { get as httpsGet } from 'node:https';
import { promisify } from 'node:util';
import { HttpProxyAgent } from 'http-proxy-agent';
import { HttpsProxyAgent } from 'https-proxy-agent';
import t from 'tap';
import { ProxyAgent, fetch as undiciFetch } from 'undici';
import { startDnsServer } from '../helpers/dns-server.js';
import { startTestProxy } from '../helpers/proxy.js';
import { missing } from '../helpers/requires.js';
import type { Event } from '../helpers/proxy.js';
import { CA_PATH, TLS, startUpstream } from '../helpers/upstream.js';

const run = promisify(execFile);

const policy = `version: 1
default_verdict: deny
rules:
  - {id: allow-pinned, priority: 10, label: Pinned test host, verdict: allow, egress: {allow: [pinned.test]}}
  - {id: deny-rest, priority: 20, verdict: deny}
`;

function body(raw: string): { method: string; url: string; headers: string[] } {
  return JSON.parse(raw);
}

function headerNames(headers: string[]): string[] {
  return headers.filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase());
}

t.test('clients', async (t) => {
  const http = await startUpstream('127.0.0.1');
  const https = await startUpstream('127.0.0.1', { tls: true });
  const dns = await startDnsServer({ 'pinned.test': { A: ['127.0.0.1'] }, 'evil.test': { A: ['127.0.0.1'] } });
  const proxy = await startTestProxy({ policy, dns: dns.address });
  t.teardown(async () => {
    await proxy.stop();
    await Promise.all([http.close(), https.close(), dns.close()]);
  });
  const decisionsFor = (tool: string) => proxy.events('egress.decision').filter((e) => e.tool === tool);

  t.test('curl: plain HTTP, with attribution headers', { skip: missing('curl') }, async (t) => {
    const { stdout } = await run('curl', [
      '-sS',
      '-x',
      proxy.url,
      '-H',
      'x-mcp-tool: curl_plain',
      '-H',
      'x-mcp-call-id: c-1',
      '-H',
      'x-mcp-session-id: s-1',
      '-H',
      'Proxy-Connection: keep-alive',
      '-H',
      'Connection: x-hop',
      '-H',
      'x-hop: 1',
      '-H',
      'x-end-to-end: kept',
      `http://PINNED.test.:${http.port}/p?q=1`,
    ]);
    const seen = body(stdout);
    t.equal(seen.url, '/p?q=1');
    const names = headerNames(seen.headers);
    for (const gone of ['x-mcp-tool', 'x-mcp-call-id', 'x-mcp-session-id', 'proxy-connection', 'x-hop'])
      t.notOk(names.includes(gone), `${gone} removed`);
    t.ok(names.includes('x-end-to-end'), 'end-to-end headers kept');
    t.equal(seen.headers[names.indexOf('host') * 2 + 1], `PINNED.test.:${http.port}`, 'the original Host header is kept');
    const d = await proxy.waitFor((e) => e.event === 'egress.decision' && e.tool === 'curl_plain');
    t.match(d, {
      verdict: 'allow',
      dispatched: true,
      reason: 'rule',
      rule: { id: 'allow-pinned' },
      call_id: 'c-1',
      session_id: 's-1',
      host: 'pinned.test',
      port: http.port,
      method: 'GET',
      addresses: ['127.0.0.1'],
      pinned_address: '127.0.0.1',
      server: '127.0.0.1',
      policy_generation: 1,
    });
    const closed = await proxy.waitFor((e) => e.event === 'egress.closed' && e.conn_id === d.conn_id);
    t.ok((closed.bytes_up as number) > 0 && (closed.bytes_down as number) > 0, 'bytes counted');
    t.equal(closed.end, 'upstream_closed');
  });

  t.test('curl: CONNECT to TLS, SNI and certificate end to end', { skip: missing('curl') }, async (t) => {
    const { stdout } = await run('curl', [
      '-sS',
      '--cacert',
      CA_PATH,
      '-x',
      proxy.url,
      '--proxy-header',
      'x-mcp-tool: curl_tls',
      `https://pinned.test:${https.port}/secure`,
    ]);
    t.equal(body(stdout).url, '/secure');
    t.equal(https.requests.at(-1)?.servername, 'pinned.test', 'SNI passed through untouched');
    const d = await proxy.waitFor((e) => e.event === 'egress.decision' && e.tool === 'curl_tls');
    t.match(d, { method: 'CONNECT', dispatched: true, pinned_address: '127.0.0.1' });
    const closed = await proxy.waitFor((e) => e.event === 'egress.closed' && e.conn_id === d.conn_id);
    t.ok((closed.bytes_up as number) > 200, 'TLS handshake bytes counted up');
  });

  t.test('curl: a refused CONNECT gets a status before any 200', { skip: missing('curl') }, async (t) => {
    const r = await run('curl', ['-sS', '-i', '-p', '-x', proxy.url, `http://evil.test:${http.port}/`]).catch(
      (e: { stdout: string; stderr: string }) => e,
    );
    t.match(r.stdout, /^HTTP\/1\.1 403 Forbidden/);
    t.notMatch(r.stdout, /200 Connection Established/);
    t.match(r.stderr, /CONNECT tunnel failed, response 403/);
    t.same(dns.queriesFor('evil.test'), [], 'refused by name: no DNS query');
  });

  t.test('curl: keep-alive, each request its own call', { skip: missing('curl') }, async (t) => {
    const before = proxy.events('egress.decision').length;
    await run('curl', [
      '-sS',
      '-x',
      proxy.url,
      '-H',
      'x-mcp-tool: ka_one',
      `http://pinned.test:${http.port}/1`,
      '--next',
      '-x',
      proxy.url,
      '-H',
      'x-mcp-tool: ka_two',
      `http://pinned.test:${http.port}/2`,
      '--next',
      '-x',
      proxy.url,
      '-H',
      'x-mcp-tool: ka_three',
      `http://evil.test:${http.port}/3`,
    ]);
    const decisions = proxy.events('egress.decision').slice(before);
    t.same(
      decisions.map((d) => [d.tool, d.dispatched]),
      [
        ['ka_one', true],
        ['ka_two', true],
        ['ka_three', false],
      ],
    );
    t.equal(new Set(decisions.map((d) => d.conn_id)).size, 3, 'own conn_id each');
    const closed = proxy.events('egress.closed').filter((c) => decisions.slice(0, 2).some((d) => d.conn_id === c.conn_id));
    t.equal(closed.length, 2, 'own closed event (and byte counts) each');
  });

  t.test('undici 7 ProxyAgent: https through CONNECT, http in absolute form', async (t) => {
    const tunnel = new ProxyAgent({
      uri: proxy.url,
      headers: { 'x-mcp-tool': 'undici_tls', 'x-mcp-call-id': 'u-1' },
      requestTls: { ca: TLS.ca },
    });
    const res = await undiciFetch(`https://pinned.test:${https.port}/u`, { dispatcher: tunnel });
    t.equal(res.status, 200);
    t.equal(body(await res.text()).url, '/u');
    await tunnel.close();
    t.match(decisionsFor('undici_tls')[0], { method: 'CONNECT', call_id: 'u-1', dispatched: true });

    const plain = new ProxyAgent({ uri: proxy.url, headers: { 'x-mcp-tool': 'undici_plain' }, proxyTunnel: false });
    const refused = await undiciFetch(`http://evil.test:${http.port}/x`, { dispatcher: plain });
    t.equal(refused.status, 403, 'absolute form lets the client see the refusal');
    t.equal(refused.headers.get('x-egress-error'), 'firewall_blocked');
    t.equal(refused.headers.get('x-egress-rule'), 'deny-rest');
    t.match(await refused.json(), {
      error: {
        code: 'firewall_blocked',
        reason: 'rule',
        rule: { id: 'deny-rest', priority: 20 },
        tool: 'undici_plain',
        destination: { host: 'evil.test', port: http.port },
      },
    });
    const ok = await undiciFetch(`http://pinned.test:${http.port}/ok`, { dispatcher: plain });
    t.equal(ok.status, 200);
    t.equal(ok.headers.get('x-egress-error'), null, 'an upstream cannot forge x-egress-* headers');
    t.equal(ok.headers.get('x-egress-rule'), null);
    await ok.text();
    await plain.close();
  });

  t.test('http-proxy-agent and https-proxy-agent with attribution headers', async (t) => {
    const plainAgent = new HttpProxyAgent(proxy.url, { headers: { 'x-mcp-tool': 'hpa_plain', 'x-mcp-call-id': 'h-1' } });
    const plainBody = await new Promise<string>((resolve, reject) => {
      httpGet(`http://pinned.test:${http.port}/hpa`, { agent: plainAgent }, (res) => {
        let b = '';
        res.on('data', (c) => (b += c));
        res.on('end', () => resolve(b));
      }).on('error', reject);
    });
    t.equal(body(plainBody).url, '/hpa');
    t.notOk(headerNames(body(plainBody).headers).includes('x-mcp-tool'));
    t.match(decisionsFor('hpa_plain')[0], { method: 'GET', call_id: 'h-1' });

    const tlsAgent = new HttpsProxyAgent(proxy.url, { headers: { 'x-mcp-tool': 'hpa_tls', 'x-mcp-call-id': 'h-2' } });
    const tlsBody = await new Promise<string>((resolve, reject) => {
      httpsGet(`https://pinned.test:${https.port}/hpa-tls`, { agent: tlsAgent, ca: TLS.ca }, (res) => {
        let b = '';
        res.on('data', (c) => (b += c));
        res.on('end', () => resolve(b));
      }).on('error', reject);
    });
    t.equal(body(tlsBody).url, '/hpa-tls');
    t.match(decisionsFor('hpa_tls')[0], { method: 'CONNECT', call_id: 'h-2', dispatched: true });
    plainAgent.destroy();
    tlsAgent.destroy();
  });

  t.test('Python requests (Debian python3-requests)', { skip: missing('python3-requests') }, async (t) => {
    const script = `
import json, sys, requests
proxies = {"http": sys.argv[1], "https": sys.argv[1]}
r = requests.get(sys.argv[2], proxies=proxies, headers={"x-mcp-tool": "py_plain"}, timeout=10)
s = requests.get(sys.argv[3], proxies=proxies, verify=sys.argv[4], timeout=10)
d = requests.get(sys.argv[5], proxies=proxies, timeout=10)
print(json.dumps([r.status_code, r.json()["url"], s.status_code, s.json()["url"], d.status_code, d.json()["error"]["code"]]))
`;
    const { stdout } = await run('/usr/bin/python3', [
      '-c',
      script,
      proxy.url,
      `http://pinned.test:${http.port}/py`,
      `https://pinned.test:${https.port}/py-tls`,
      CA_PATH,
      `http://evil.test:${http.port}/py-denied`,
    ]);
    t.same(JSON.parse(stdout), [200, '/py', 200, '/py-tls', 403, 'firewall_blocked']);
    t.match(decisionsFor('py_plain')[0], { dispatched: true });
  });

  t.test('every dispatched call has one decision and one closed event', async (t) => {
    const count = (events: Event[]) => {
      const n = new Map<unknown, number>();
      for (const e of events) n.set(e.conn_id, (n.get(e.conn_id) ?? 0) + 1);
      return n;
    };
    const decisions = count(proxy.events('egress.decision').filter((d: Event) => d.dispatched));
    // A tunnel's closed line follows its client's close (the agents above are destroyed last):
    // wait for it rather than race it.
    const deadline = performance.now() + 3000;
    let closed = count(proxy.events('egress.closed'));
    while ([...decisions.keys()].some((id) => !closed.has(id)) && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      closed = count(proxy.events('egress.closed'));
    }
    t.ok(decisions.size > 0, `the clients above made dispatched calls (${decisions.size})`);
    for (const [connId, n] of decisions) {
      t.equal(n, 1, `one decision for ${String(connId)}`);
      t.equal(closed.get(connId), 1, `one closed event for ${String(connId)}`);
    }
  });
});
