/**
 * Calls: a client's open registered calls (`GET /v1/calls?client=`), registering and ending
 * calls as a developer (`POST`/`DELETE /v1/calls`), and a session's recorded history
 * (`GET /v1/history?session=` or `?server=`), newest first.
 */
import { api } from '../api.js';
import type { Context, View } from '../context.js';
import { isDeveloper } from '../context.js';
import { clear, dateTime, field, h, notice, table } from '../dom.js';
import { explain } from '../explain.js';

interface OpenCall {
  call_id: string;
  tool: string;
  client: string;
  session_id: string | null;
  registered_at: string;
  expires_at: string;
}
interface HistoryCall {
  at: string | number;
  tool: string | null;
  call_id: string | null;
  server: string | null;
  session_id: string | null;
  host: string | null;
  address: string | null;
  dispatched: boolean | null;
}

function randomId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export const calls: View = {
  title: 'Calls',
  mount(root: HTMLElement, ctx: Context) {
    const dev = isDeveloper(ctx);
    const client = h('input', { name: 'client', required: true, placeholder: 'proxy user name or source IP', value: '127.0.0.1' });
    const openOut = h('div', { class: 'calls-out', 'aria-live': 'polite' });
    const showOpen = async () => {
      try {
        const answer = await api<{ calls: OpenCall[] }>('GET', `/v1/calls?client=${encodeURIComponent(client.value.trim())}`);
        const rows = answer.calls.map((c) =>
          h(
            'tr',
            { 'data-call-id': c.call_id },
            h('td', {}, h('code', {}, c.call_id)),
            h('td', {}, c.tool),
            h('td', {}, c.session_id ?? ''),
            h('td', {}, dateTime(c.registered_at)),
            h('td', {}, dateTime(c.expires_at)),
            dev
              ? h(
                  'td',
                  {},
                  h(
                    'button',
                    {
                      type: 'button',
                      class: 'danger',
                      'aria-label': `End call ${c.call_id}`,
                      onclick: () =>
                        void api('DELETE', `/v1/calls/${encodeURIComponent(c.call_id)}`).then(showOpen, (err) =>
                          clear(openOut, explain(err)),
                        ),
                    },
                    'End',
                  ),
                )
              : null,
          ),
        );
        const headers = ['Call id', 'Tool', 'Session', 'Registered', 'Expires'];
        if (dev) headers.push('');
        clear(
          openOut,
          rows.length
            ? table(headers, rows, `Open registrations of ${client.value.trim()}`)
            : notice('info', `No open registration for ${client.value.trim()}.`),
        );
      } catch (err) {
        clear(openOut, explain(err));
      }
    };
    const openForm = h(
      'form',
      { class: 'inline-form', 'aria-label': 'Open registrations' },
      field('Client', client),
      h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Show open calls')),
    );
    openForm.addEventListener('submit', (e) => {
      e.preventDefault();
      void showOpen();
    });

    let register: HTMLElement | null = null;
    if (dev) {
      const tool = h('input', { name: 'tool', required: true });
      const session = h('input', { name: 'session_id' });
      const ttl = h('input', { name: 'ttl_ms', type: 'number', min: 1, value: 60000 });
      const form = h(
        'form',
        { class: 'inline-form', 'aria-label': 'Register a call' },
        h('h3', {}, 'Register a call for this client'),
        h('div', { class: 'grid' }, field('Tool', tool), field('Session', session), field('TTL (ms)', ttl)),
        h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Register')),
      );
      form.addEventListener('submit', (e) => {
        e.preventDefault();
        const body: Record<string, unknown> = {
          call_id: randomId(),
          tool: tool.value.trim(),
          client: client.value.trim(),
          ttl_ms: Number(ttl.value),
        };
        if (session.value.trim()) body.session_id = session.value.trim();
        api('POST', '/v1/calls', { json: body }).then(showOpen, (err) => clear(openOut, explain(err)));
      });
      register = form;
    }

    const key = h(
      'select',
      { name: 'key' },
      h('option', { value: 'session' }, 'session'),
      h('option', { value: 'server' }, 'server (calls with no session)'),
    );
    const id = h('input', { name: 'history_id', required: true });
    const historyOut = h('div', { class: 'history-out', 'aria-live': 'polite' });
    const historyForm = h(
      'form',
      { class: 'inline-form', 'aria-labelledby': 'history-title' },
      h('h3', { id: 'history-title' }, 'Session history'),
      h('div', { class: 'grid' }, field('By', key), field('Id', id)),
      h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Show history')),
    );
    historyForm.addEventListener('submit', (e) => {
      e.preventDefault();
      api<{ key: string; calls: HistoryCall[] }>('GET', `/v1/history?${key.value}=${encodeURIComponent(id.value.trim())}`).then(
        (answer) => {
          const rows = answer.calls.map((c) =>
            h(
              'tr',
              {},
              h('td', {}, dateTime(c.at)),
              h('td', {}, c.tool ?? h('span', { class: 'muted' }, 'no tool')),
              h('td', {}, c.call_id ? h('code', {}, c.call_id) : ''),
              h('td', {}, c.server ?? ''),
              h('td', {}, c.host ? h('code', {}, c.host) : h('span', { class: 'muted' }, 'not an egress call')),
              h('td', {}, c.address ?? ''),
              h('td', {}, c.dispatched === null ? '' : c.dispatched ? 'dispatched' : 'refused'),
            ),
          );
          clear(
            historyOut,
            rows.length
              ? table(['When', 'Tool', 'Call id', 'Server', 'Host', 'Address', 'Outcome'], rows, `History of ${answer.key}, newest first`)
              : notice('info', 'No recorded call for that key.'),
          );
        },
        (err) => clear(historyOut, explain(err)),
      );
    });
    root.append(h('h3', {}, 'Open registrations'), openForm, ...(register ? [register] : []), openOut, historyForm, historyOut);
    void showOpen();
  },
};
