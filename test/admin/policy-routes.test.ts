/**
 * Editing the policy through the admin API, against the real proxy: roles, every If-Match case,
 * validation with positions in the file that would be written, the file changed only where the
 * edit is (byte for byte elsewhere), the next request decided by the new rule, policy.changed,
 * concurrent writes (one wins), a read-only file (409, also a real read-only mount), and hot
 * reload from the file alongside (our own write is not loaded a second time).
 */
import { spawn } from 'node:child_process';
import { chmod, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { adminApi, ADMIN_WITH_TOKENS, DEVELOPER_TOKEN, sha256, VIEWER_TOKEN } from '../helpers/admin.js';
import { startTestProxyFor } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { getRequest, rawRequest } from '../helpers/raw.js';
import { startUpstream } from '../helpers/upstream.js';
import type { TestUpstream } from '../helpers/upstream.js';

const POLICY = `# Console API test policy: comments, blank lines and spacing must survive edits.
version: 1
default_verdict: deny    # refuse what no rule allows

rules:
  # The local upstream, for fetch only.
  - id: allow-fetch
    priority: 10
    label: "Fetch may reach the upstream"
    tool_name_glob: fetch
    verdict: allow
    egress:
      allow: [ 127.0.0.1 ]   # the test upstream

  - id: deny-metadata       # odd spacing on purpose
    priority: 5
    verdict: deny
    egress: {deny: [169.254.169.254]}
`;

async function setup(
  t: { teardown(fn: () => unknown): void },
  policy = POLICY,
): Promise<{ proxy: TestProxy; upstream: TestUpstream; call: (tool: string) => Promise<number> }> {
  const upstream = await startUpstream();
  t.teardown(() => upstream.close());
  const proxy = await startTestProxyFor(t, { policy, config: ADMIN_WITH_TOKENS });
  const call = async (tool: string) => {
    const res = await rawRequest(
      proxy.port,
      getRequest(`http://127.0.0.1:${upstream.port}/`, `127.0.0.1:${upstream.port}`, `x-mcp-tool: ${tool}\r\n`),
    );
    return res.status;
  };
  return { proxy, upstream, call };
}

const etagOf = async (proxy: TestProxy) =>
  (await adminApi(proxy, 'GET', '/v1/policy', { token: VIEWER_TOKEN })).headers.get('etag') as string;
const write = (proxy: TestProxy, method: string, path: string, etag: string | null, body: unknown, token = DEVELOPER_TOKEN) =>
  adminApi(proxy, method, path, { token, body, headers: etag === null ? {} : { 'if-match': etag } });

/** The lines of `before` that `after` changed: [first, last] 1-based in `before`, after the common head and tail. */
function changedLines(before: string, after: string): { from: number; to: number; added: string[] } {
  const a = before.split('\n');
  const b = after.split('\n');
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head++;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head && a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail++;
  return { from: head + 1, to: a.length - tail, added: b.slice(head, b.length - tail) };
}

t.test('GET /v1/policy gives the ETag writes must name', async (t) => {
  const { proxy } = await setup(t);
  const res = await adminApi(proxy, 'GET', '/v1/policy', { token: VIEWER_TOKEN });
  t.equal(res.headers.get('etag'), `"${sha256(POLICY)}"`);
  t.equal(res.json.sha256, sha256(POLICY));
});

t.test('roles: no token 401, a viewer 403, and the file is untouched', async (t) => {
  const { proxy } = await setup(t);
  const etag = await etagOf(proxy);
  const rule = { id: 'x', priority: 1, verdict: 'allow' };
  for (const [method, path, body] of [
    ['POST', '/v1/rules', rule],
    ['PUT', '/v1/rules/allow-fetch', rule],
    ['DELETE', '/v1/rules/allow-fetch', undefined],
    ['PATCH', '/v1/policy', { shadow_mode: true }],
  ] as const) {
    t.equal((await write(proxy, method, path, etag, body, '')).status, 401, `${method} ${path} without a token`);
    t.equal((await write(proxy, method, path, etag, body, VIEWER_TOKEN)).status, 403, `${method} ${path} as a viewer`);
  }
  const put = await adminApi(proxy, 'PUT', '/v1/policy', {
    token: VIEWER_TOKEN,
    raw: 'version: 1\n',
    type: 'application/yaml',
    headers: { 'if-match': etag },
  });
  t.equal(put.status, 403);
  t.equal(await readFile(proxy.policyFile, 'utf8'), POLICY);
  t.equal(proxy.running.store.current.generation, 1);
});

t.test('If-Match: missing 428, malformed 400, stale 412; nothing changes', async (t) => {
  const { proxy } = await setup(t);
  const rule = { id: 'x', priority: 1, verdict: 'allow' };
  const missing = await write(proxy, 'POST', '/v1/rules', null, rule);
  t.equal(missing.status, 428);
  t.equal(missing.json.error.code, 'precondition_required');
  for (const bad of ['*', `"${sha256(POLICY)}", "${sha256('x')}"`, 'W/"abc"', '"abc"']) {
    const res = await write(proxy, 'POST', '/v1/rules', bad, rule);
    t.equal(res.status, 400, `If-Match: ${bad}`);
  }
  const stale = await write(proxy, 'POST', '/v1/rules', `"${sha256('an older policy')}"`, rule);
  t.equal(stale.status, 412);
  t.equal(stale.json.error.code, 'policy_changed');
  t.equal(stale.json.error.sha256, sha256(POLICY), 'the 412 names the current digest');
  // The digest unquoted and in capitals is the same digest.
  const ok = await write(proxy, 'POST', '/v1/rules', sha256(POLICY).toUpperCase(), rule);
  t.equal(ok.status, 200);
  t.equal((await readFile(proxy.policyFile, 'utf8')) === POLICY, false);
});

t.test('POST /v1/rules appends the rule, keeps every other byte, and the next request is decided by it', async (t) => {
  const { proxy, call } = await setup(t);
  t.equal(await call('search'), 403, 'before: no rule lets search through');
  const res = await write(proxy, 'POST', '/v1/rules', await etagOf(proxy), {
    verdict: 'allow',
    id: 'allow-search',
    priority: 20,
    tool_name_glob: 'search',
    egress: { allow: ['127.0.0.1'] },
  });
  t.equal(res.status, 200, res.text);
  const after = await readFile(proxy.policyFile, 'utf8');
  t.ok(after.startsWith(POLICY), 'the old text is untouched');
  t.equal(
    after.slice(POLICY.length),
    '\n  - id: allow-search\n    priority: 20\n    tool_name_glob: search\n    verdict: allow\n    egress:\n      allow: [127.0.0.1]\n',
  );
  t.equal(res.json.generation, 2);
  t.equal(res.json.sha256, sha256(after));
  t.equal(res.headers.get('etag'), `"${sha256(after)}"`);
  t.equal(proxy.running.store.current.generation, 2, 'loaded before the answer');
  t.equal(await call('search'), 200, 'after: the new rule decides');
  const changed = await proxy.waitFor((e) => e.event === 'policy.changed');
  t.match(changed, {
    name: 'alice',
    route: 'POST /v1/rules',
    rule_id: 'allow-search',
    old_sha256: sha256(POLICY),
    new_sha256: sha256(after),
    generation: 2,
  });
});

t.test("PUT /v1/rules/{id} changes only that rule's lines; DELETE removes them", async (t) => {
  const { proxy, call } = await setup(t);
  t.equal(await call('fetch'), 200);
  const put = await write(proxy, 'PUT', '/v1/rules/allow-fetch', await etagOf(proxy), {
    priority: 10,
    label: 'Fetch may reach the upstream',
    tool_name_glob: 'fetch',
    verdict: 'deny',
    egress: { deny: ['127.0.0.1'] },
  });
  t.equal(put.status, 200, put.text);
  const after = await readFile(proxy.policyFile, 'utf8');
  const diff = changedLines(POLICY, after);
  // Lines 7-13 are the rule (from `- id: allow-fetch` to its egress list); the comment above it stays.
  t.ok(diff.from >= 7 && diff.to <= 13, `changed lines ${diff.from}-${diff.to} lie inside the rule`);
  t.ok(after.includes('  # The local upstream, for fetch only.\n  - id: allow-fetch\n'), 'the id is kept when the body leaves it out');
  t.ok(after.includes('  - id: deny-metadata       # odd spacing on purpose\n'), 'the other rule is byte for byte');
  t.ok(after.includes('default_verdict: deny    # refuse what no rule allows\n'));
  t.equal(await call('fetch'), 403, 'the replaced rule decides the next request');
  t.equal(proxy.running.store.current.policy.spec.rules.find((r) => r.id === 'allow-fetch')?.verdict, 'deny');

  const mismatch = await write(proxy, 'PUT', '/v1/rules/allow-fetch', await etagOf(proxy), { id: 'other', priority: 1, verdict: 'allow' });
  t.equal(mismatch.status, 400, "the body's id must be the path's");
  const unknown = await write(proxy, 'PUT', '/v1/rules/nope', await etagOf(proxy), { priority: 1, verdict: 'allow' });
  t.equal(unknown.status, 404);

  const beforeDelete = await readFile(proxy.policyFile, 'utf8');
  const del = await write(proxy, 'DELETE', '/v1/rules/allow-fetch', await etagOf(proxy), undefined);
  t.equal(del.status, 200, del.text);
  const afterDelete = await readFile(proxy.policyFile, 'utf8');
  const removed = changedLines(beforeDelete, afterDelete);
  t.same(removed.added, [], 'a delete only removes lines');
  t.equal(
    afterDelete,
    beforeDelete.replace(/ {2}# The local upstream, for fetch only\.\n {2}- id: allow-fetch\n(?: {4}.*\n)+\n/, ''),
    'the rule, its comment and one blank line go',
  );
  t.equal(await call('fetch'), 403, 'now refused by the default verdict');
  t.equal((await write(proxy, 'DELETE', '/v1/rules/allow-fetch', await etagOf(proxy), undefined)).status, 404);
});

t.test('PATCH /v1/policy switches settings in place; shadow mode takes effect', async (t) => {
  const { proxy, call } = await setup(t);
  t.equal(await call('search'), 403);
  const res = await write(proxy, 'PATCH', '/v1/policy', await etagOf(proxy), { observe_mode: true, shadow_mode: true });
  t.equal(res.status, 200, res.text);
  const after = await readFile(proxy.policyFile, 'utf8');
  t.equal(after, POLICY.replace('# refuse what no rule allows\n', '# refuse what no rule allows\nshadow_mode: true\nobserve_mode: true\n'));
  t.equal(await call('search'), 200, 'shadow mode: dispatched');
  const res2 = await write(proxy, 'PATCH', '/v1/policy', await etagOf(proxy), { default_verdict: 'allow', shadow_mode: false });
  t.equal(res2.status, 200, res2.text);
  t.equal(
    await readFile(proxy.policyFile, 'utf8'),
    POLICY.replace('default_verdict: deny    #', 'default_verdict: allow    #').replace(
      '# refuse what no rule allows\n',
      '# refuse what no rule allows\nshadow_mode: false\nobserve_mode: true\n',
    ),
  );
  for (const bad of [
    {},
    { shadow_mode: 'yes' },
    { rules: [] },
    { default_verdict: 3 },
    { default_verdict: 'deny\nshadow_mode: true' },
    { default_verdict: 'audit' },
  ]) {
    const r = await write(proxy, 'PATCH', '/v1/policy', await etagOf(proxy), bad);
    t.equal(r.status, 400, JSON.stringify(bad));
    t.equal(r.json?.error?.code, 'bad_request', 'refused up front, not by validating a rendered file');
  }
});

t.test('an invalid result is a 400 with every problem at its position in the file that would be written', async (t) => {
  const { proxy } = await setup(t);
  const etag = await etagOf(proxy);
  const res = await write(proxy, 'POST', '/v1/rules', etag, {
    id: 'bad',
    priority: 'high',
    verdict: 'allow',
    egress: { allow: ['not a host', '10.0.0.1/8'] },
  });
  t.equal(res.status, 400);
  t.equal(res.json.error.code, 'policy_invalid');
  const lines = (res.json.error.content as string).split('\n');
  t.equal(res.json.error.errors.length, 3, res.json.error.errors.join('\n'));
  for (const e of res.json.error.errors as string[]) {
    const m = /^(.*):(\d+):(\d+): error: /.exec(e);
    t.ok(m, e);
    t.equal(m?.[1], proxy.policyFile, 'named by the policy file');
  }
  const at = (p: { line: number; col: number }) => (lines[p.line - 1] as string).slice(p.col - 1);
  t.same(res.json.error.problems.map(at), ['high', 'not a host, 10.0.0.1/8]', '10.0.0.1/8]']);
  const dup = await write(proxy, 'POST', '/v1/rules', etag, { id: 'allow-fetch', priority: 1, verdict: 'allow' });
  t.equal(dup.status, 400, 'a duplicate id');
  t.match(dup.json.error.errors[0], /duplicate rule id 'allow-fetch'/);
  const put = await adminApi(proxy, 'PUT', '/v1/policy', {
    token: DEVELOPER_TOKEN,
    raw: 'version: 2\nrules: {}\n',
    type: 'application/yaml',
    headers: { 'if-match': etag },
  });
  t.equal(put.status, 400);
  t.equal(put.json.error.errors.length, 2);
  t.equal(await readFile(proxy.policyFile, 'utf8'), POLICY, 'nothing written');
  t.equal(proxy.running.store.current.generation, 1, 'nothing loaded');
  t.equal(proxy.events('policy.changed').length, 0);
});

t.test('PUT /v1/policy writes the text as sent', async (t) => {
  const { proxy, call } = await setup(t);
  const text = '# replaced whole\nversion: 1\ndefault_verdict: allow\n';
  const wrongType = await adminApi(proxy, 'PUT', '/v1/policy', {
    token: DEVELOPER_TOKEN,
    body: { policy: text },
    headers: { 'if-match': await etagOf(proxy) },
  });
  t.equal(wrongType.status, 415);
  const res = await adminApi(proxy, 'PUT', '/v1/policy', {
    token: DEVELOPER_TOKEN,
    raw: text,
    type: 'application/yaml',
    headers: { 'if-match': await etagOf(proxy) },
  });
  t.equal(res.status, 200, res.text);
  t.equal(await readFile(proxy.policyFile, 'utf8'), text);
  t.equal(await call('anything'), 200);
  const same = await adminApi(proxy, 'PUT', '/v1/policy', {
    token: DEVELOPER_TOKEN,
    raw: text,
    type: 'application/yaml',
    headers: { 'if-match': await etagOf(proxy) },
  });
  t.equal(same.status, 200);
  t.equal(same.json.generation, res.json.generation, 'the same bytes: no new generation');
  t.equal(same.json.written, false);
});

t.test('concurrent writes with one If-Match: exactly one wins, the others get 412', async (t) => {
  const { proxy } = await setup(t);
  const etag = await etagOf(proxy);
  const answers = await Promise.all(
    Array.from({ length: 6 }, (_, i) => write(proxy, 'POST', '/v1/rules', etag, { id: `r${i}`, priority: 100 + i, verdict: 'allow' })),
  );
  const statuses = answers.map((a) => a.status).sort();
  t.same(statuses, [200, 412, 412, 412, 412, 412]);
  const file = await readFile(proxy.policyFile, 'utf8');
  t.equal((file.match(/- id: r\d/g) ?? []).length, 1, 'one rule added');
  t.equal(proxy.running.store.current.generation, 2);
  t.equal(proxy.running.store.current.sha256, sha256(file));
});

t.test('hot reload from the file keeps working, and our own write is not loaded twice', async (t) => {
  const { proxy } = await setup(t);
  const res = await write(proxy, 'PATCH', '/v1/policy', await etagOf(proxy), { observe_mode: true });
  t.equal(res.status, 200);
  // Longer than the watcher's debounce and poll: a second load of our write would show by now.
  await new Promise((r) => setTimeout(r, 2_500));
  const metrics = await (
    await fetch(`http://127.0.0.1:${(proxy.running.admin?.server.address() as { port: number }).port}/metrics`)
  ).text();
  t.notMatch(
    metrics,
    /egress_policy_reloads_total\{result="unchanged",trigger="(watch|poll)"\} [1-9]/,
    'the watcher did not load our write again',
  );
  t.equal(proxy.events('policy.loaded').length, 2);

  // An operator edits the file by hand: loaded as usual, and the old ETag is now stale.
  const edited = (await readFile(proxy.policyFile, 'utf8')).replace('default_verdict: deny', 'default_verdict: allow');
  await writeFile(proxy.policyFile, edited);
  await proxy.waitFor((e) => e.event === 'policy.loaded' && e.generation === 3, 3000);
  const stale = await write(proxy, 'PATCH', '/v1/policy', res.headers.get('etag'), { shadow_mode: true });
  t.equal(stale.status, 412);
  t.equal(await readFile(proxy.policyFile, 'utf8'), edited);
});

t.test('a file the proxy must not write: 409 policy_read_only, nothing changes', async (t) => {
  const { proxy } = await setup(t);
  await chmod(proxy.policyFile, 0o444);
  const res = await write(proxy, 'PATCH', '/v1/policy', await etagOf(proxy), { shadow_mode: true });
  t.equal(res.status, 409, res.text);
  t.equal(res.json.error.code, 'policy_read_only');
  t.equal(await readFile(proxy.policyFile, 'utf8'), POLICY);
  t.equal(proxy.running.store.current.generation, 1);
});

t.test('a read-only mount (as a ConfigMap is): 409 policy_read_only', async (t) => {
  // A mount namespace of its own (unshare, as the test runner's network namespace is made), so the
  // read-only bind mount is seen by that proxy process only.
  const dir = await mkdtemp(join(tmpdir(), 'mep-ro-'));
  await writeFile(join(dir, 'policy.yaml'), POLICY);
  await writeFile(join(dir, 'proxy.yaml'), `listen: 127.0.0.1:0\npolicy: policy.yaml\n${ADMIN_WITH_TOKENS}\n`);
  const script = `mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && exec "$2" dist/src/cli.js serve --config "$1/proxy.yaml"`;
  const child = spawn('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script, 'sh', dir, process.execPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => void child.kill('SIGKILL'));
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no admin listener: ${out} ${err}`)), 10_000);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /"listener":"admin","address":"[^"]+","port":(\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
  });
  const base = `http://127.0.0.1:${port}`;
  const res = await fetch(`${base}/v1/policy`, {
    method: 'PATCH',
    headers: { authorization: `Bearer ${DEVELOPER_TOKEN}`, 'content-type': 'application/json', 'if-match': `"${sha256(POLICY)}"` },
    body: JSON.stringify({ shadow_mode: true }),
  });
  const body = (await res.json()) as { error: { code: string; message: string } };
  t.equal(res.status, 409);
  t.equal(body.error.code, 'policy_read_only');
  t.match(body.error.message, /EROFS/);
  t.equal(await readFile(join(dir, 'policy.yaml'), 'utf8'), POLICY);
});
