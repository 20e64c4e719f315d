/** An API refusal shown to a person: what happened, and for a stale If-Match what to do next. */
import { ApiError } from './api.js';
import { h, notice } from './dom.js';

function positions(body: Record<string, unknown>): string[] {
  const error = (body.error ?? {}) as Record<string, unknown>;
  const list = Array.isArray(error.errors) ? error.errors : Array.isArray(body.errors) ? body.errors : [];
  return list.map((e) => (typeof e === 'string' ? e : JSON.stringify(e)));
}

export function explain(err: unknown, onReload?: () => void): HTMLElement {
  if (!(err instanceof ApiError)) return notice('error', `Request failed: ${(err as Error)?.message ?? String(err)}`);
  if (err.status === 412) {
    return notice(
      'error',
      h('strong', { class: 'conflict' }, 'Conflict: the policy changed since this page loaded it. '),
      'Nothing was written (the If-Match digest was stale). Reload the policy, check what changed, and apply your change again.',
      onReload ? h('div', { class: 'actions' }, h('button', { type: 'button', onclick: onReload }, 'Reload the policy')) : null,
    );
  }
  const lines = positions(err.body);
  return notice(
    'error',
    h('strong', {}, `${err.status} ${err.code}: `),
    err.message,
    lines.length ? h('ul', { class: 'positions' }, ...lines.map((l) => h('li', {}, h('code', {}, l)))) : null,
  );
}
