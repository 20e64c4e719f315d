/**
 * The Events view in real headless Chromium: real traffic through the real proxy shows up in
 * the live feed (a refusal within a second, with its rule), a shadow-mode refusal is marked
 * "[shadow] would deny", the chart's counts are the decisions the proxy made, and the verdict
 * filter narrows the feed.
 */
import t from 'tap';
import type { Test } from 'tap';
import { launchBrowser, screenshot, signIn } from '../helpers/browser.js';
import type { ConsolePage, TestBrowser } from '../helpers/browser.js';
import { missing } from '../helpers/requires.js';
import { consoleFixture, DEVELOPER } from '../helpers/console-fixture.js';
import type { ConsoleFixture } from '../helpers/console-fixture.js';

const policy = (shadow: boolean) => `version: 1
default_verdict: deny
shadow_mode: ${shadow}
rules:
  - {id: allow-fetch, priority: 10, label: Fetch may reach the local upstream, verdict: allow, tool_name_glob: fetch, egress: {allow: [127.0.0.1]}}
  - {id: audit-search, priority: 15, label: Search is audited, verdict: audit, tool_name_glob: search}
  - {id: deny-upload, priority: 20, label: No uploads, verdict: deny, tool_name_glob: upload}
`;

async function live(f: ConsoleFixture, browser: TestBrowser, t: Test): Promise<ConsolePage> {
  const p = await browser.open(`${f.admin}/console/#events`);
  t.teardown(() => p.context.close());
  await signIn(p.page, DEVELOPER);
  await p.page.locator('.feed-status', { hasText: 'Live' }).waitFor();
  return p;
}

/** The chart's totals as the page shows them. */
async function totals(p: ConsolePage): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const kind of ['allow', 'audit', 'shadow', 'deny'])
    out[kind] = Number(await p.page.locator(`.chart-totals td[data-kind=${kind}]`).textContent());
  return out;
}

t.test('the live feed in Chromium', { skip: missing('chromium') }, async (t) => {
  const browser = await launchBrowser();
  t.teardown(() => browser.close());

  t.test('a refusal shows within a second, with its rule; the chart counts what the proxy decided', async (t) => {
    const f = await consoleFixture(t, policy(false));
    const p = await live(f, browser, t);
    const started = Date.now();
    t.equal(await f.call('upload'), 403);
    const row = p.page.locator('tr.decision[data-kind=deny]');
    await row.waitFor({ timeout: 1000 });
    const shownAfter = Date.now() - started;
    t.ok(shownAfter < 1000, `shown ${shownAfter} ms after the call`);
    const text = await row.textContent();
    t.match(text, /refused/);
    t.match(text, /deny-upload/, 'with its rule');
    t.match(text, new RegExp(`127\\.0\\.0\\.1:${f.upstream.port}`), 'and its destination');
    t.equal(await row.locator('.rule-ref').getAttribute('title'), 'No uploads', "the rule's label on hover");

    for (const tool of ['fetch', 'fetch', 'search', 'upload', 'other']) await f.call(tool);
    const decisions = await f.proxy.waitForCount('egress.decision', 6);
    await p.page.locator('tr.decision').nth(5).waitFor();
    const expected = { allow: 0, audit: 0, shadow: 0, deny: 0 } as Record<string, number>;
    for (const e of decisions) {
      const kind = e.verdict === 'deny' ? (e.shadow ? 'shadow' : 'deny') : String(e.verdict);
      expected[kind] = (expected[kind] ?? 0) + 1;
    }
    t.same(expected, { allow: 2, audit: 1, shadow: 0, deny: 3 }, 'what the proxy decided');
    t.same(await totals(p), expected, "the chart's totals are the proxy's decisions");
    // The calls may straddle a minute boundary: the bars since the first call say the same, together.
    const bars = await p.page.locator('.chart svg g title').allTextContents();
    const sum = [0, 0, 0, 0, 0];
    for (const bar of bars.slice(-2)) {
      const m = /(\d+) decisions \((\d+) allowed, (\d+) audited, (\d+) \[shadow\] would deny, (\d+) refused\)/.exec(bar);
      if (m) for (let i = 0; i < 5; i++) sum[i] = (sum[i] as number) + Number(m[i + 1]);
    }
    t.same(sum, [6, 2, 1, 0, 3], `the last minutes' bars say the same (${bars.slice(-2).join(' | ')})`);
    t.ok((await p.page.locator('.chart svg g rect.bar-deny').count()) >= 1, 'a refused segment is drawn');
    await screenshot(p.page, 'events');

    await p.page.locator('form.filters select[name=verdict]').selectOption('deny');
    await p.page.getByRole('button', { name: 'Apply filters' }).click();
    await p.page.locator('.feed-status', { hasText: 'Live' }).waitFor();
    await p.page.locator('tr.decision').nth(2).waitFor();
    t.same(
      await p.page.locator('tr.decision').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-kind'))),
      ['deny', 'deny', 'deny'],
      'the verdict filter: refusals only',
    );
    t.same(p.problems, []);
  });

  t.test("a sequence clause's refusal shows the earlier call it matched", async (t) => {
    // The data path records history for sequence clauses in another branch (h/history); until
    // then this decision line is a real one, re-issued with an \`after\` as the sink would write it.
    const f = await consoleFixture(t, policy(false));
    t.equal(await f.call('upload'), 403);
    await f.proxy.waitForCount('egress.decision', 1);
    const [real] = f.proxy.running.feed.recent(1);
    if (!real) throw new Error('no recorded decision');
    const after = { call_id: 'c-read', tool: 'read_file', server: '127.0.0.1', session_id: 's-1', host: null, seconds_ago: 12.5 };
    const line = JSON.stringify({ ...JSON.parse(real.line), conn_id: 'seq-1', after });
    f.proxy.running.feed.decision({ ...real.event, conn_id: 'seq-1' }, line);
    const p = await live(f, browser, t);
    const row = p.page.locator('tr.decision[data-conn-id=seq-1]');
    await row.waitFor();
    t.match(await row.locator('.after').textContent(), 'after read_file on 127.0.0.1, 12.5 s before', 'the earlier call, at a glance');
    t.equal(await row.locator('.after').getAttribute('title'), 'earlier call c-read');
    t.equal(await p.page.locator('tr.decision').first().locator('.after').count(), 1);
    t.same(p.problems, []);
  });

  t.test('shadow mode: a refusal is dispatched and marked [shadow] would deny', async (t) => {
    const f = await consoleFixture(t, policy(true));
    const p = await live(f, browser, t);
    t.equal(await f.call('upload'), 200, 'dispatched: shadow mode');
    const row = p.page.locator('tr.decision[data-kind=shadow]');
    await row.waitFor({ timeout: 1000 });
    t.match(await row.textContent(), /\[shadow\] would deny.*deny-upload/, 'marked, with the rule that would have refused');
    t.equal(await p.page.locator('tr.decision[data-kind=deny]').count(), 0, 'not shown as refused');
    t.same(await totals(p), { allow: 0, audit: 0, shadow: 1, deny: 0 }, 'counted as would-deny');
    await screenshot(p.page, 'events-shadow');
    t.same(p.problems, []);
  });
});
