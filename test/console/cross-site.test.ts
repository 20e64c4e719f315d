/**
 * A web page of another origin on the same host (another loopback port), in real Chromium,
 * against the console: it cannot frame it (frame-ancestors 'none'), cannot run its script in
 * its own context (Cross-Origin-Resource-Policy), and cannot read or write the admin API
 * (Origin check, no CORS), even when the operator's browser has the console open.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { launchBrowser, signIn } from '../helpers/browser.js';
import { consoleFixture, DEVELOPER } from '../helpers/console-fixture.js';
import { missing } from '../helpers/requires.js';

const POLICY = 'version: 1\nrules:\n  - {id: deny-upload, priority: 20, verdict: deny, tool_name_glob: upload}\n';

t.test('a page of another origin against the console', { skip: missing('chromium') }, async (t) => {
  const browser = await launchBrowser();
  t.teardown(() => browser.close());
  const f = await consoleFixture(t, POLICY);
  // The attacker's page: served from another port of the same host.
  const attack = `<!doctype html><html><body>
<iframe id="frame" src="${f.admin}/console/"></iframe>
<script>
window.results = {};
const s = document.createElement('script');
s.src = '${f.admin}/console/app.js';
s.onload = () => (window.results.script = 'loaded');
s.onerror = () => (window.results.script = 'blocked');
document.body.append(s);
fetch('${f.admin}/v1/policy').then((r) => (window.results.read = r.status), () => (window.results.read = 'blocked'));
fetch('${f.admin}/v1/rules', { method: 'POST', mode: 'no-cors', headers: { 'content-type': 'text/plain' }, body: '{"id":"x","priority":1,"verdict":"allow"}' })
  .then((r) => (window.results.write = r.type), () => (window.results.write = 'blocked'));
</script></body></html>`;
  const site = createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(attack));
  await new Promise<void>((resolve) => site.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => site.close(() => resolve())));
  const origin = `http://127.0.0.1:${(site.address() as AddressInfo).port}`;

  // The operator is signed in to the console in the same browser.
  const operator = await browser.open(`${f.admin}/console/`);
  t.teardown(() => operator.context.close());
  await signIn(operator.page, DEVELOPER);
  const page = await operator.context.newPage();
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => {
    const r = (window as unknown as { results: Record<string, unknown> }).results;
    return r && 'script' in r && 'read' in r && 'write' in r;
  });
  const results = await page.evaluate(() => (window as unknown as { results: Record<string, unknown> }).results);
  t.equal(results.script, 'blocked', "the console's script cannot be run by another origin (CORP)");
  t.equal(results.read, 'blocked', 'the API cannot be read cross-origin (403 and no CORS)');
  t.equal(results.write, 'opaque', 'a no-cors write gets an opaque answer...');
  const frame = page.frames().find((fr) => fr !== page.mainFrame());
  t.notOk(
    frame && (await frame.evaluate(() => document.querySelector('#tabs') !== null).catch(() => false)),
    'the console did not render in a frame',
  );
  const refused = f.proxy.events('admin.refused').filter((e) => e.code === 'forbidden_origin');
  t.ok(refused.length >= 2, '...refused by the Origin check, logged');
  t.equal(f.proxy.running.store.current.generation, 1, 'nothing written');
  t.same(
    f.proxy.running.store.current.policy.spec.rules.map((r) => r.id),
    ['deny-upload'],
  );
});
