/**
 * The console's entry point: sign-in (the token once, kept in this tab's sessionStorage), the
 * role (asked of the API, which enforces it anyway), and the views behind the tabs (#events,
 * #discovered, #test, #policy, #calls).
 */
import { api, ApiError, auth, probeRole } from './api.js';
import type { Role } from './api.js';
import type { Context, View } from './context.js';
import { clear, field, h, notice } from './dom.js';
import { calls } from './views/calls.js';
import { discovered } from './views/discovered.js';
import { events, startFeed, stopFeed } from './views/events.js';
import { policy } from './views/policy.js';
import { test } from './views/test.js';

const VIEWS: Record<string, View> = { events, discovered, test, policy, calls };
const main = document.getElementById('main') as HTMLElement;
const tabs = document.getElementById('tabs') as HTMLElement;
const who = document.getElementById('who') as HTMLElement;
let unmount: (() => void) | void;
let ctx: Context | null = null;
/** The operator chose the tokenless viewer in this tab. */
const TOKENLESS_KEY = 'mcp-egress-proxy.tokenless';

/** Shows the view named in the location's hash; `focus`: move the keyboard focus to it (a tab was followed). */
function show(focus = false): void {
  if (!ctx) return;
  const name = location.hash.replace(/^#/, '') || 'events';
  const view = VIEWS[name] ?? events;
  if (unmount) unmount();
  for (const a of tabs.querySelectorAll('a')) {
    if (a.getAttribute('href') === `#${name}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${view.title} · mcp-egress-proxy`;
  const root = h('section', { class: `view view-${name}`, 'aria-labelledby': 'view-title' }, h('h2', { id: 'view-title' }, view.title));
  clear(main, root);
  unmount = view.mount(root, ctx);
  if (focus) main.focus();
}

function signOut(): void {
  auth.token = null;
  sessionStorage.removeItem(TOKENLESS_KEY);
  stopFeed();
  ctx = null;
  tabs.hidden = true;
  location.hash = '';
  void start();
}

function signedIn(role: Role, tokenless: boolean): void {
  ctx = { role, tokenless, go: (view) => (location.hash = `#${view}`) };
  tabs.hidden = false;
  // The feed runs from sign-in on, so the chart counts whichever view is open.
  startFeed();
  clear(
    who,
    h('span', { class: `role role-${role}`, 'data-role': role }, tokenless ? 'viewer (no token)' : role),
    tokenless
      ? h('button', { type: 'button', onclick: () => signInForm(null, true) }, 'Use a token')
      : h('button', { type: 'button', onclick: signOut }, 'Sign out'),
  );
  show();
  // Signed in: the keyboard starts at the views' tabs.
  tabs.querySelector<HTMLElement>('a[aria-current=page]')?.focus();
}

function signInForm(problem: string | null, tokenlessWorks: boolean): void {
  tabs.hidden = true;
  clear(who);
  const input = h('input', { type: 'password', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true, class: 'wide' });
  const form = h(
    'form',
    { class: 'signin', 'aria-labelledby': 'signin-title' },
    h('h2', { id: 'signin-title' }, 'Sign in'),
    h(
      'p',
      {},
      'Paste an admin token (made by ',
      h('code', {}, 'mcp-egress-proxy token'),
      '). It stays in this tab only and is sent as a Bearer header.',
    ),
    problem ? notice('error', problem) : null,
    field('Admin token', input),
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
      tokenlessWorks ? h('button', { type: 'button', onclick: () => void start(true) }, 'Continue without a token (viewer)') : null,
    ),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.removeItem(TOKENLESS_KEY);
    auth.token = input.value.trim();
    void start();
  });
  clear(main, form);
  input.focus();
}

/** Decides who the operator is: a stored token, the tokenless viewer, or the sign-in form. */
async function start(tokenless = false): Promise<void> {
  try {
    if (auth.token) {
      try {
        await api('GET', '/v1/policy');
      } catch (err) {
        auth.token = null;
        if (err instanceof ApiError && err.status === 401) return signInForm('That token was refused (401).', false);
        throw err;
      }
      return signedIn(await probeRole(), false);
    }
    let anonymousWorks = false;
    try {
      await api('GET', '/v1/policy', { anonymous: true });
      anonymousWorks = true;
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) throw err;
    }
    if (anonymousWorks && (tokenless || sessionStorage.getItem(TOKENLESS_KEY) === '1')) {
      sessionStorage.setItem(TOKENLESS_KEY, '1');
      return signedIn('viewer', true);
    }
    signInForm(null, anonymousWorks);
  } catch (err) {
    clear(
      main,
      notice('error', `The admin API did not answer: ${(err as Error).message}`),
      h('button', { type: 'button', onclick: () => void start(tokenless) }, 'Try again'),
    );
  }
}

window.addEventListener('hashchange', () => show(true));
void start();
