/**
 * The console in real headless Chromium against the real proxy: what a person sees in each view,
 * by role. Viewer and developer tokens, the tokenless viewer, the Test view's trace, Calls, a
 * narrow window and the keyboard; and throughout, that the page loads nothing from anywhere
 * but the admin listener and the CSP refuses nothing (no inline script or style).
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import t from 'tap';
import type { Test } from 'tap';
import { launchBrowser, screenshot, signIn } from '../helpers/browser.js';
import type { ConsolePage, TestBrowser } from '../helpers/browser.js';
import { missing } from '../helpers/requires.js';
import { consoleFixture, DEVELOPER, VIEWER } from '../helpers/console-fixture.js';

const POLICY = `# the console's fixture policy
version: 1
default_verdict: deny
observe_mode: true
rules:
  - id: allow-fetch
    priority: 10
    label: Fetch may reach the local upstream
    verdict: allow
    tool_name_glob: fetch
    egress: {allow: [127.0.0.1]}
  - id: deny-upload
    priority: 20
    label: No uploads
    verdict: deny
    tool_name_glob: upload
`;

/** Every request the page made went to the admin listener, and nothing was refused by the CSP or thrown. */
function clean(t: Test, p: ConsolePage, admin: string): void {
  const elsewhere = p.requests.filter((u) => !u.startsWith(`${admin}/`) && !u.startsWith('blob:'));
  t.same(elsewhere, [], 'the page requested nothing but the admin listener');
  t.same(p.problems, [], 'no console errors (a CSP violation would be one)');
}

t.test('the console in Chromium', { skip: missing('chromium') }, async (t) => {
  const browser: TestBrowser = await launchBrowser();
  t.teardown(() => browser.close());
  const f = await consoleFixture(t, POLICY);
  t.equal(await f.call('fetch'), 200);
  t.equal(await f.call('upload'), 403);
  t.equal(await f.call('other-tool', '/seen'), 403, 'uncovered: refused and discovered');

  t.test('a viewer sees the policy and no edit control; the API refuses the write anyway', async (t) => {
    const p = await browser.open(`${f.admin}/console/`);
    t.teardown(() => p.context.close());
    await signIn(p.page, VIEWER);
    t.equal(await p.page.locator('#who .role').textContent(), 'viewer');
    await p.page.getByRole('link', { name: 'Policy' }).click();
    await p.page.locator('tr[data-rule-id=deny-upload]').waitFor();
    t.equal(await p.page.locator('[data-fact=generation]').textContent(), '1');
    t.equal(await p.page.locator('tbody tr').count(), 2);
    t.same(await p.page.locator('tbody tr code').first().textContent(), 'allow-fetch', 'evaluation order');
    for (const name of ['Add rule', 'Edit', 'Delete', 'Shadow mode on', 'Observe mode off', 'Reload from file']) {
      t.equal(await p.page.getByRole('button', { name }).count(), 0, `no '${name}' button`);
    }
    await screenshot(p.page, 'policy-viewer');
    await p.page.getByRole('link', { name: 'Discovered' }).click();
    await p.page.locator('[data-destination]').first().waitFor();
    t.equal(await p.page.getByRole('button', { name: /Propose/ }).count(), 0, 'no proposed rules for a viewer');
    await p.page.getByRole('link', { name: 'Test' }).click();
    await p.page.getByText('need a developer token').waitFor();
    t.equal(await p.page.locator('form.test-form').count(), 0, 'no dry-run form');
    // The page only hides; the API decides. The viewer's own token, from the page's own origin:
    const statuses = await p.page.evaluate(async () => {
      const token = sessionStorage.getItem('mcp-egress-proxy.token');
      const h = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
      const policy = await (await fetch('/v1/policy', { headers: h })).json();
      const write = { ...h, 'if-match': `"${policy.sha256}"` };
      const add = await fetch('/v1/rules', {
        method: 'POST',
        headers: write,
        body: JSON.stringify({ id: 'sneaky', priority: 1, verdict: 'allow' }),
      });
      const patch = await fetch('/v1/policy', { method: 'PATCH', headers: write, body: JSON.stringify({ shadow_mode: true }) });
      const del = await fetch('/v1/rules/deny-upload', { method: 'DELETE', headers: write });
      const reload = await fetch('/v1/reload', { method: 'POST', headers: h });
      const test = await fetch('/v1/test', { method: 'POST', headers: h, body: JSON.stringify({ destination: 'x:1' }) });
      return [add.status, patch.status, del.status, reload.status, test.status];
    });
    t.same(statuses, [403, 403, 403, 403, 403], 'the API refuses every write and dry run to a viewer token (403)');
    t.equal(await readFile(f.proxy.policyFile, 'utf8'), POLICY, 'the file is untouched');
    t.equal(f.proxy.running.store.current.generation, 1, 'no new generation');
    clean(t, p, f.admin);
  });

  t.test('a developer runs a dry run and sees the trace per address', async (t) => {
    const p = await browser.open(`${f.admin}/console/#test`);
    t.teardown(() => p.context.close());
    await signIn(p.page, DEVELOPER);
    t.equal(await p.page.locator('#who .role').textContent(), 'developer');
    await p.page.getByRole('link', { name: 'Test' }).click();
    await p.page.getByLabel('Destination').fill('http://api.example.test:8080/');
    await p.page.getByLabel('Tool', { exact: true }).fill('fetch');
    await p.page.getByLabel('Resolve').fill('api.example.test=93.184.216.34,10.1.2.3');
    await p.page.getByRole('button', { name: 'Run the test' }).click();
    const card = p.page.locator('.decision-card');
    await card.waitFor();
    t.equal(await card.getAttribute('data-kind'), 'deny', 'refused');
    t.match(await card.locator('.decision-line').textContent(), /reason default · rule none/);
    t.equal(await card.locator('tbody tr').count(), 2, 'one trace row per candidate address');
    t.match(
      await card.locator('tr[data-address="10.1.2.3"]').textContent(),
      /ssrf_baseline \(private\)/,
      'the private address refused by the baseline, with its class',
    );
    const publicRow = await card.locator('tr[data-address="93.184.216.34"]').textContent();
    t.match(publicRow, /default/, 'the public one by the default verdict');
    t.match(
      publicRow,
      /allow-fetch: api\.example\.test \(93\.184\.216\.34\) is not on the allow list/,
      'with why the rules before it did not match',
    );
    await screenshot(p.page, 'test-trace');
    clean(t, p, f.admin);
  });

  t.test('names chosen by the guarded server are shown as text, never run', async (t) => {
    // The guarded server picks its tool names (and its user name without auth.users); a policy
    // author picks labels. Markup in them must stay text: no script runs, nothing is fetched.
    const hostile = `<img src=/console/x.png onerror="document.title='pwned'"><script>document.title='pwned'</script>*`;
    const g = await consoleFixture(
      t,
      POLICY.replace('label: No uploads', `label: ${JSON.stringify(`<b onmouseover=alert(1)>No uploads</b>`)}`),
    );
    t.equal(await g.call(hostile), 403, 'refused and discovered under a hostile tool name');
    const p = await browser.open(`${g.admin}/console/#events`);
    t.teardown(() => p.context.close());
    let dialogs = 0;
    p.page.on('dialog', (d) => {
      dialogs++;
      void d.dismiss();
    });
    await signIn(p.page, DEVELOPER);
    const row = p.page.locator('tr.decision').first();
    await row.waitFor();
    t.match(await row.textContent(), hostile, 'the tool name as text, in full');
    await p.page.getByRole('link', { name: 'Discovered' }).click();
    const tool = p.page.locator('[data-tool] summary code').first();
    await tool.waitFor();
    t.equal(await tool.textContent(), hostile);
    await p.page.getByRole('button', { name: /Propose a rule/ }).click();
    t.equal(await p.page.locator('form.rule-form input[name=tool_name_glob]').inputValue(), '', 'a name with * is not proposed as a glob');
    t.match(await p.page.locator('form.rule-form').textContent(), /contains \* or \?/, 'and the page says why');
    await p.page.getByRole('link', { name: 'Policy' }).click();
    await p.page.locator('tr[data-rule-id=deny-upload]').hover();
    t.match(
      await p.page.locator('tr[data-rule-id=deny-upload]').textContent(),
      /<b onmouseover=alert\(1\)>No uploads<\/b>/,
      'a label as text',
    );
    t.equal(await p.page.locator('main img, main script, main b').count(), 0, 'no element made from a name');
    t.equal(dialogs, 0, 'no script ran');
    t.not(await p.page.title(), 'pwned');
    t.notOk(
      p.requests.some((u) => u.includes('x.png')),
      'nothing fetched because of a name',
    );
    clean(t, p, g.admin);
  });

  t.test("a dry run with history shows the sequence clause's earlier call", async (t) => {
    const g = await consoleFixture(
      t,
      `${POLICY}  - id: no-fetch-after-read
    priority: 1
    label: No fetch right after a file read
    verdict: deny
    tool_name_glob: fetch
    after: {tool_name_glob: "read_*", within_seconds: 600}
`,
    );
    const p = await browser.open(`${g.admin}/console/#test`);
    t.teardown(() => p.context.close());
    await signIn(p.page, DEVELOPER);
    await p.page.getByRole('link', { name: 'Test' }).click();
    await p.page.getByLabel('Destination').fill('127.0.0.1:8080');
    await p.page.getByLabel('Tool', { exact: true }).fill('fetch');
    await p.page.getByLabel('History').fill('tool=read_file,seconds_ago=30,call_id=c-earlier');
    await p.page.getByRole('button', { name: 'Run the test' }).click();
    const card = p.page.locator('.decision-card');
    await card.waitFor();
    t.match(await card.textContent(), /Sequence clause matched the earlier call read_file \(c-earlier\), 30 s before/);
    t.match(await card.locator('tbody tr').first().textContent(), /no-fetch-after-read.*after read_file, 30 s before/, 'in the trace too');
    await screenshot(p.page, 'test-sequence');
    clean(t, p, g.admin);
  });

  t.test('Policy shows the last rejected reload with its positions, while the previous generation serves', async (t) => {
    const g = await consoleFixture(t, POLICY);
    await writeFile(`${g.proxy.policyFile}.tmp`, POLICY.replace('    verdict: deny\n', '    verdict: maybe\n'));
    await rename(`${g.proxy.policyFile}.tmp`, g.proxy.policyFile);
    await g.proxy.waitFor((e) => e.event === 'policy.rejected');
    const p = await browser.open(`${g.admin}/console/#policy`);
    t.teardown(() => p.context.close());
    await signIn(p.page, VIEWER);
    await p.page.getByRole('link', { name: 'Policy' }).click();
    const rejected = p.page.locator('.notice-error', { hasText: 'Last reload rejected' });
    await rejected.waitFor();
    t.match(await rejected.textContent(), /generation 1 keeps serving/);
    t.match(
      await rejected.locator('.positions li').first().textContent(),
      /policy\.yaml:15:14: error: verdict must be one of/,
      'FILE:LINE:COL of the bad verdict',
    );
    t.equal(await p.page.locator('tr[data-rule-id]').count(), 2, 'the serving rules still shown');
    await screenshot(p.page, 'policy-rejected');
    clean(t, p, g.admin);
  });

  t.test('the tokenless viewer (no tokens configured)', async (t) => {
    const g = await consoleFixture(t, POLICY, { tokens: false });
    const p = await browser.open(`${g.admin}/console/`);
    t.teardown(() => p.context.close());
    await signIn(p.page, null);
    t.equal(await p.page.locator('#who .role').textContent(), 'viewer (no token)');
    await p.page.getByRole('link', { name: 'Policy' }).click();
    await p.page.locator('tr[data-rule-id=allow-fetch]').waitFor();
    t.equal(await p.page.getByRole('button', { name: 'Edit' }).count(), 0);
    clean(t, p, g.admin);
  });

  t.test("Calls: a client's open registrations, registered and ended by a developer", async (t) => {
    const p = await browser.open(`${f.admin}/console/#calls`);
    t.teardown(() => p.context.close());
    await signIn(p.page, DEVELOPER);
    await p.page.getByLabel('Tool', { exact: true }).fill('read_file');
    await p.page.getByRole('button', { name: 'Register' }).click();
    const row = p.page.locator('tr[data-call-id]');
    await row.waitFor();
    t.match(await row.textContent(), /read_file/);
    t.equal((await f.proxy.running.registry.open('127.0.0.1')).length, 1, 'registered in the proxy');
    await screenshot(p.page, 'calls');
    await p.page.getByRole('button', { name: /^End call/ }).click();
    await p.page.getByText('No open registration').waitFor();
    t.equal((await f.proxy.running.registry.open('127.0.0.1')).length, 0, 'ended in the proxy');
    clean(t, p, f.admin);
  });

  t.test('keyboard only, and a narrow window', async (t) => {
    const p = await browser.open(`${f.admin}/console/`, { width: 400, height: 800 });
    t.teardown(() => p.context.close());
    await p.page.locator('input[name=token]').waitFor();
    t.equal(await p.page.evaluate(() => document.activeElement?.getAttribute('name')), 'token', 'the token field has the focus');
    await p.page.keyboard.type(DEVELOPER);
    await p.page.keyboard.press('Enter');
    await p.page.locator('#who .role').waitFor();
    // Tab to the Policy tab and open it with Enter.
    let reached = false;
    for (let i = 0; i < 10 && !reached; i++) {
      await p.page.keyboard.press('Tab');
      reached = (await p.page.evaluate(() => document.activeElement?.textContent)) === 'Policy';
    }
    t.ok(reached, 'the Policy tab is reachable with Tab');
    await p.page.keyboard.press('Enter');
    await p.page.locator('tr[data-rule-id=allow-fetch]').waitFor();
    const overflow = await p.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    t.ok(overflow <= 0, `nothing wider than a 400 px window (overflow ${overflow})`);
    await screenshot(p.page, 'policy-narrow');
    clean(t, p, f.admin);
  });
});
