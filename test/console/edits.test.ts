/**
 * Changing the policy from the console in real headless Chromium: a developer adds a rule and
 * the file on disk changes only where it should, and the next request is decided by it; a
 * stale If-Match shows the conflict and writes nothing; Discovered turns a destination into a
 * rule added in shadow mode; the draft allow-list downloads and passes `check`; Replay lists
 * exactly the calls whose verdict would change; a rule is deleted after confirming.
 */
import { readFile, writeFile, rename } from 'node:fs/promises';
import t from 'tap';
import type { Test } from 'tap';
import { parsePolicy } from '../../src/policy/schema.js';
import { adminApi } from '../helpers/admin.js';
import { launchBrowser, screenshot, signIn } from '../helpers/browser.js';
import type { ConsolePage, TestBrowser } from '../helpers/browser.js';
import { missing } from '../helpers/requires.js';
import { consoleFixture, DEVELOPER } from '../helpers/console-fixture.js';
import type { ConsoleFixture } from '../helpers/console-fixture.js';

const POLICY = `# Console edit fixture: comments and order must survive edits.
version: 1
default_verdict: deny   # refuse what no rule allows
observe_mode: true
rules:
  # Fetch tools reach the local upstream.
  - id: allow-fetch
    priority: 10
    label: Fetch may reach the local upstream
    verdict: allow
    tool_name_glob: fetch
    egress: {allow: [127.0.0.1]}

  # Uploads never.
  - id: deny-upload
    priority: 20
    label: No uploads
    verdict: deny
    tool_name_glob: upload
`;

async function open(f: ConsoleFixture, browser: TestBrowser, t: Test, view: string): Promise<ConsolePage> {
  const p = await browser.open(`${f.admin}/console/`);
  t.teardown(() => p.context.close());
  await signIn(p.page, DEVELOPER);
  await p.page.getByRole('link', { name: view, exact: true }).click();
  return p;
}

/** Lines of `after` that are not in `before`, and whether every line of `before` is still there, in order. */
function lineDiff(before: string, after: string): { added: string[]; kept: boolean } {
  const a = before.split('\n');
  const b = after.split('\n');
  let i = 0;
  const added: string[] = [];
  for (const line of b) {
    if (i < a.length && line === a[i]) i++;
    else added.push(line);
  }
  return { added, kept: i === a.length };
}

async function lastDecision(f: ConsoleFixture): Promise<Record<string, unknown>> {
  const count = f.proxy.events('egress.decision').length;
  return (await f.proxy.waitForCount('egress.decision', count))[count - 1] as Record<string, unknown>;
}

t.test('editing from the console in Chromium', { skip: missing('chromium') }, async (t) => {
  const browser = await launchBrowser();
  t.teardown(() => browser.close());

  t.test('a developer adds a rule: only its lines are added to the file, and the next request is decided by it', async (t) => {
    const f = await consoleFixture(t, POLICY);
    t.equal(await f.call('upload'), 403, 'refused before');
    const p = await open(f, browser, t, 'Policy');
    await p.page.getByRole('button', { name: 'Add rule' }).click();
    const form = p.page.locator('form.rule-form');
    await form.locator('input[name=id]').fill('allow-upload-local');
    await form.locator('input[name=priority]').fill('15');
    await form.locator('input[name=label]').fill('Uploads to the local upstream');
    await form.locator('select[name=verdict]').selectOption('allow');
    await form.locator('input[name=tool_name_glob]').fill('upload');
    await form.locator('textarea[name=allow]').fill('127.0.0.1');
    await screenshot(p.page, 'policy-add-rule');
    await form.getByRole('button', { name: 'Add rule' }).click();
    await p.page.locator('.notice-ok', { hasText: 'Rule allow-upload-local added' }).waitFor();
    await p.page.locator('tr[data-rule-id=allow-upload-local]').waitFor();
    t.same(
      await p.page.locator('tbody tr[data-rule-id]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-rule-id'))),
      ['allow-fetch', 'allow-upload-local', 'deny-upload'],
      'shown in evaluation order',
    );
    t.equal(await p.page.locator('[data-fact=generation]').textContent(), '2', 'the new generation');
    await screenshot(p.page, 'policy-developer');

    const written = await readFile(f.proxy.policyFile, 'utf8');
    const diff = lineDiff(POLICY, written);
    t.ok(diff.kept, 'every line of the file is still there, in order (comments included)');
    const added = diff.added.filter((l) => l.trim() !== '');
    t.ok(added.length > 0 && added.length <= 8, `only the rule's lines were added (${added.length})`);
    t.match(added.join('\n'), /allow-upload-local/);
    t.notMatch(added.join('\n'), /allow-fetch|deny-upload|default_verdict|observe_mode/, 'nothing else');
    t.same(
      parsePolicy('p.yaml', written).spec?.rules.map((r) => r.id),
      ['allow-fetch', 'deny-upload', 'allow-upload-local'],
    );

    t.equal(await f.call('upload'), 200, 'the next request is allowed');
    const e = await lastDecision(f);
    t.same(e.rule, { id: 'allow-upload-local', label: 'Uploads to the local upstream', priority: 15 }, 'decided by the new rule');
    t.equal(e.policy_generation, 2);
    t.same(p.problems, []);
  });

  t.test('a stale If-Match shows the conflict and writes nothing', async (t) => {
    const f = await consoleFixture(t, POLICY);
    const p = await open(f, browser, t, 'Policy');
    await p.page.locator('tr[data-rule-id=deny-upload]').waitFor();
    // Meanwhile, someone edits the file (by rename, as editors do) and the proxy reloads it.
    const changed = POLICY.replace('label: No uploads', 'label: No uploads, ever');
    await writeFile(`${f.proxy.policyFile}.tmp`, changed);
    await rename(`${f.proxy.policyFile}.tmp`, f.proxy.policyFile);
    await f.proxy.waitFor((e) => e.event === 'policy.loaded' && e.generation === 2);
    await p.page.getByRole('button', { name: 'Shadow mode on' }).click();
    const conflict = p.page.locator('.notice-error .conflict');
    await conflict.waitFor();
    t.match(await p.page.locator('.notice-error').textContent(), /policy changed since this page loaded it.*Nothing was written/);
    await screenshot(p.page, 'policy-conflict');
    t.equal(await readFile(f.proxy.policyFile, 'utf8'), changed, 'the file is the other edit, untouched');
    t.equal(f.proxy.running.store.current.policy.spec.shadowMode, false, 'still enforcing');
    await p.page.getByRole('button', { name: 'Reload the policy' }).click();
    await p.page.locator('[data-fact=generation]', { hasText: '2' }).waitFor();
    t.match(await p.page.locator('tr[data-rule-id=deny-upload]').textContent(), /No uploads, ever/, 'the other edit shown after reloading');
    await p.page.getByRole('button', { name: 'Shadow mode on' }).click();
    await p.page.locator('[data-fact=shadow_mode]', { hasText: 'on' }).waitFor();
    t.equal(f.proxy.running.store.current.policy.spec.shadowMode, true, 'applied once the page knows the current policy');
    t.same(p.problems, []);
  });

  t.test('Discovered: a destination becomes a rule added in shadow mode; the draft downloads and passes check', async (t) => {
    const f = await consoleFixture(t, POLICY);
    t.equal(await f.call('crawler', '/seen'), 403, 'uncovered: refused and discovered');
    const p = await open(f, browser, t, 'Discovered');
    const destination = p.page.locator(`[data-tool=crawler] [data-destination="127.0.0.1:${f.upstream.port}"]`);
    await destination.waitFor();
    t.equal(
      await p.page.locator('[data-server="127.0.0.1"] > details > summary strong').textContent(),
      '127.0.0.1',
      'server → tool → host:port',
    );
    await screenshot(p.page, 'discovered');

    const [download] = await Promise.all([
      p.page.waitForEvent('download'),
      p.page.getByRole('button', { name: 'Download the draft allow-list' }).click(),
    ]);
    t.equal(download.suggestedFilename(), 'draft-policy.yaml');
    const draft = await readFile(await download.path(), 'utf8');
    const parsed = parsePolicy('draft-policy.yaml', draft);
    t.ok(parsed.spec, 'the downloaded draft passes check');
    t.ok(
      parsed.spec?.rules.some((r) => r.toolGlob === 'crawler'),
      'and allows what was seen',
    );

    await destination.getByRole('button', { name: /Propose a rule/ }).click();
    const form = p.page.locator('form.rule-form');
    t.equal(await form.locator('input[name=tool_name_glob]').inputValue(), 'crawler');
    t.equal(await form.locator('input[name=server_glob]').inputValue(), '127.0.0.1');
    t.equal(await form.locator('textarea[name=allow]').inputValue(), '127.0.0.1');
    t.equal(await form.locator('input[name=ports]').inputValue(), String(f.upstream.port));
    t.match(await form.textContent(), /Shadow first/, 'says what it will do');
    await screenshot(p.page, 'discovered-propose');
    await form.getByRole('button', { name: 'Switch to shadow mode and add rule' }).click();
    await p.page.locator('.notice-ok', { hasText: 'added in shadow mode' }).waitFor();

    const spec = f.proxy.running.store.current.policy.spec;
    t.equal(spec.shadowMode, true, 'the policy is in shadow mode');
    const rule = spec.rules.find((r) => r.toolGlob === 'crawler');
    t.ok(rule, 'with the proposed rule');
    t.same(rule?.ports, [f.upstream.port]);
    t.equal(rule?.verdict, 'allow');
    const written = await readFile(f.proxy.policyFile, 'utf8');
    t.match(written, /^shadow_mode: true/m);
    t.ok(lineDiff(POLICY, written).kept, 'the rest of the file kept');
    t.equal(await f.call('crawler', '/seen'), 200, 'the destination is now dispatched');
    t.equal((await lastDecision(f)).rule && ((await lastDecision(f)).rule as { id: string }).id, rule?.id, 'by the proposed rule');
    t.same(p.problems, []);
  });

  t.test('Replay lists exactly the calls whose verdict would change', async (t) => {
    const f = await consoleFixture(t, POLICY);
    for (const tool of ['fetch', 'upload', 'fetch', 'other', 'search']) await f.call(tool);
    const decisions = await f.proxy.waitForCount('egress.decision', 5);
    const fetches = decisions.filter((e) => e.tool === 'fetch').map((e) => e.conn_id);
    t.equal(fetches.length, 2);
    const p = await open(f, browser, t, 'Test');
    await p.page.getByRole('button', { name: 'Start from the live policy' }).click();
    const draftBox = p.page.locator('textarea[name=draft]');
    await p.page.waitForFunction(() =>
      (document.querySelector('textarea[name=draft]') as HTMLTextAreaElement).value.includes('allow-fetch'),
    );
    // The draft: fetch refused from now on; everything else as it is.
    const live = await draftBox.inputValue();
    const draft = live.replace(/(id: "allow-fetch"[\s\S]*?verdict: )allow/, '$1deny');
    t.not(draft, live, 'the draft differs from the live policy');
    await draftBox.fill(draft);
    await p.page.getByRole('button', { name: 'Replay' }).click();
    const summary = p.page.locator('.replay-summary');
    await summary.waitFor();
    t.equal(await summary.getAttribute('data-total'), '5', 'every recorded call replayed');
    t.equal(await summary.getAttribute('data-changed'), '2');
    const listed = await p.page
      .locator('.replay-result tr[data-conn-id]')
      .evaluateAll((rows) => rows.map((r) => r.getAttribute('data-conn-id')));
    t.same(listed.sort(), [...fetches].sort(), 'exactly the two fetch calls');
    t.match(
      await p.page.locator(`.replay-result tr[data-conn-id="${String(fetches[0])}"]`).textContent(),
      /allowed allow-fetch.*refused default/,
      'live: allowed by allow-fetch; draft: refused by the default (on a deny rule the allow list only exempts)',
    );
    await screenshot(p.page, 'test-replay');
    const api = await adminApi(f.proxy, 'POST', '/v1/test/replay', { token: DEVELOPER, body: { policy: draft } });
    t.same([...api.json.changed].sort(), [...fetches].sort(), 'what the API says');
    t.same(p.problems, []);
  });

  t.test('a developer edits a rule: its id stays, the other rules and comments are kept, the next request follows it', async (t) => {
    const f = await consoleFixture(t, POLICY);
    const p = await open(f, browser, t, 'Policy');
    await p.page.getByRole('button', { name: 'Edit rule deny-upload' }).click();
    const form = p.page.locator('form.rule-form');
    t.equal(await form.locator('input[name=id]').getAttribute('readonly'), '', 'the id cannot change');
    t.equal(await form.locator('input[name=label]').inputValue(), 'No uploads', 'the form starts from the rule');
    await form.locator('input[name=label]').fill('Uploads audited');
    await form.locator('select[name=verdict]').selectOption('audit');
    await form.getByRole('button', { name: 'Save rule' }).click();
    await p.page.locator('.notice-ok', { hasText: 'Rule deny-upload saved' }).waitFor();
    const written = await readFile(f.proxy.policyFile, 'utf8');
    const before = POLICY.split('\n');
    const kept = written.split('\n');
    for (const line of before.slice(0, before.indexOf('  - id: deny-upload'))) t.ok(kept.includes(line), `kept: ${line || '(blank)'}`);
    const rule = parsePolicy('p.yaml', written).spec?.rules.find((r) => r.id === 'deny-upload');
    t.same([rule?.label, rule?.verdict, rule?.toolGlob, rule?.priority], ['Uploads audited', 'audit', 'upload', 20], 'the rule as edited');
    t.equal(await f.call('upload'), 200, 'audited: dispatched');
    t.equal((await lastDecision(f)).verdict, 'audit');
    t.same(p.problems, []);
  });

  t.test('a rule is deleted after confirming; cancelling keeps it', async (t) => {
    const f = await consoleFixture(t, POLICY);
    const p = await open(f, browser, t, 'Policy');
    await p.page.locator('tr[data-rule-id=deny-upload]').waitFor();
    p.page.once('dialog', (d) => void d.dismiss());
    await p.page.getByRole('button', { name: 'Delete rule deny-upload' }).click();
    t.equal(await readFile(f.proxy.policyFile, 'utf8'), POLICY, 'dismissed: nothing written');
    p.page.once('dialog', (d) => void d.accept());
    await p.page.getByRole('button', { name: 'Delete rule deny-upload' }).click();
    await p.page.locator('.notice-ok', { hasText: 'Rule deny-upload deleted' }).waitFor();
    t.equal(await p.page.locator('tr[data-rule-id=deny-upload]').count(), 0);
    const written = await readFile(f.proxy.policyFile, 'utf8');
    t.notMatch(written, /deny-upload|No uploads/);
    t.match(written, /# Console edit fixture: comments and order must survive edits\.\n/, 'comments kept');
    t.ok(lineDiff(written, POLICY).kept, 'only lines removed');
    t.same(p.problems, []);
  });
});
