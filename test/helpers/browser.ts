/**
 * Real headless Chromium (Debian's `chromium`, driven by playwright-core; no browser download)
 * for the console's tests. It may reach loopback only: the tests run in the loopback-only
 * namespace, Chromium's background networking (updates, safe browsing, metrics, DNS prefetch)
 * is switched off, every name but localhost fails to resolve, and the helper records every
 * request a page makes so a test can assert none left 127.0.0.1. Console messages (a CSP
 * violation is one) are recorded too.
 */
import { mkdir } from 'node:fs/promises';
import { chromium } from 'playwright-core';
import type { Browser, BrowserContext, Page } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';
/** Screenshots of each view, for people (git-ignored). */
export const SCREENSHOTS = new URL('../../.screenshots/', import.meta.url).pathname;

const FLAGS = [
  '--no-sandbox', // the tests run as root inside the namespace, where Chromium's sandbox cannot start
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-default-apps',
  '--disable-domain-reliability',
  '--disable-sync',
  '--disable-extensions',
  '--no-first-run',
  '--no-default-browser-check',
  '--metrics-recording-only',
  '--disable-breakpad',
  '--dns-prefetch-disable',
  '--no-pings',
  '--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions',
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
];

export interface ConsolePage {
  readonly page: Page;
  readonly context: BrowserContext;
  /** Every URL the page requested. */
  readonly requests: string[];
  /** Console messages of type error or warning (CSP violations land here), but for the API's own refusals ("Failed to load resource": 4xx answers the page expects, such as the role probe). */
  readonly problems: string[];
}

export interface TestBrowser {
  readonly browser: Browser;
  open(url: string, options?: { width?: number; height?: number }): Promise<ConsolePage>;
  close(): Promise<void>;
}

export async function launchBrowser(): Promise<TestBrowser> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  await mkdir(SCREENSHOTS, { recursive: true });
  return {
    browser,
    async open(url, options = {}) {
      const context = await browser.newContext({
        viewport: { width: options.width ?? 1280, height: options.height ?? 800 },
        acceptDownloads: true,
        serviceWorkers: 'block',
      });
      const page = await context.newPage();
      page.setDefaultTimeout(5000);
      const requests: string[] = [];
      const problems: string[] = [];
      page.on('request', (r) => requests.push(r.url()));
      page.on('console', (m) => {
        if (
          (m.type() === 'error' || m.type() === 'warning') &&
          !m.text().startsWith('Failed to load resource: the server responded with a status of 4')
        )
          problems.push(m.text());
      });
      page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
      await page.goto(url);
      return { page, context, requests, problems };
    },
    close: () => browser.close(),
  };
}

/** Signs in on the console's form with `token` (empty: continue as the tokenless viewer). */
export async function signIn(page: Page, token: string | null): Promise<void> {
  if (token === null) await page.getByRole('button', { name: /Continue without a token/ }).click();
  else {
    await page.getByLabel('Admin token').fill(token);
    await page.getByRole('button', { name: 'Sign in' }).click();
  }
  await page.locator('#who .role').waitFor();
}

export async function screenshot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: `${SCREENSHOTS}${name}.png`, fullPage: true });
}
