/**
 * Events: the live feed of decisions (`GET /v1/events`, server-sent events, filtered by the
 * API), refusals and "[shadow] would deny" marked, the sequence clause's earlier call shown,
 * and decisions per minute by verdict. The feed keeps running while the operator looks at
 * other views, so the chart keeps counting; the API replays its last 1,000 decisions to a new
 * stream, and conn_id keeps a reconnect from counting one twice.
 */
import { stream } from '../api.js';
import type { Context, View } from '../context.js';
import { clear, field, h, svg, table, time } from '../dom.js';

export interface DecisionEvent {
  conn_id: string;
  time: string | number;
  verdict: 'allow' | 'deny' | 'audit';
  dispatched: boolean;
  shadow: boolean;
  reason: string;
  rule: { id: string; label: string | null; priority: number } | null;
  tool: string | null;
  call_id: string | null;
  session_id: string | null;
  server: string | null;
  host: string;
  port: number;
  method: string;
  pinned_address: string | null;
  address_class?: string | null;
  after?: { tool: string | null; call_id: string | null; server: string | null; host: string | null; seconds_ago: number } | null;
  msg?: string;
}

export type Kind = 'allow' | 'audit' | 'deny' | 'shadow';
export const KINDS: readonly Kind[] = ['allow', 'audit', 'shadow', 'deny'];
export const KIND_LABEL: Record<Kind, string> = { allow: 'allowed', audit: 'audited', shadow: '[shadow] would deny', deny: 'refused' };

export function kindOf(e: { verdict: string; shadow: boolean; dispatched: boolean }): Kind {
  if (e.verdict === 'deny') return e.shadow ? 'shadow' : 'deny';
  return e.verdict === 'audit' ? 'audit' : 'allow';
}

const KEEP = 1000;
const MINUTES = 15;
const FILTERS = ['verdict', 'tool', 'server', 'host'] as const;
type Filters = Record<(typeof FILTERS)[number], string>;

const feed = {
  decisions: [] as DecisionEvent[],
  seen: new Set<string>(),
  /** minute (ms since the epoch / 60000) → counts by kind; only the last hour is kept. */
  perMinute: new Map<number, Record<Kind, number>>(),
  state: 'closed' as string,
  detail: '',
  dropped: 0,
  filters: { verdict: '', tool: '', server: '', host: '' } as Filters,
  stop: null as (() => void) | null,
  onChange: null as (() => void) | null,
};

function eventTime(e: DecisionEvent): number {
  const t = typeof e.time === 'number' ? e.time : Date.parse(String(e.time));
  return Number.isFinite(t) ? t : Date.now();
}

function changed(): void {
  const cb = feed.onChange;
  if (cb) requestAnimationFrame(cb);
}

function accept(e: DecisionEvent): void {
  if (typeof e.conn_id !== 'string' || feed.seen.has(e.conn_id)) return;
  feed.seen.add(e.conn_id);
  feed.decisions.push(e);
  if (feed.decisions.length > KEEP) feed.seen.delete((feed.decisions.shift() as DecisionEvent).conn_id);
  const minute = Math.floor(eventTime(e) / 60_000);
  const counts = feed.perMinute.get(minute) ?? { allow: 0, audit: 0, deny: 0, shadow: 0 };
  counts[kindOf(e)] += 1;
  feed.perMinute.set(minute, counts);
  for (const m of feed.perMinute.keys()) if (m < minute - 60) feed.perMinute.delete(m);
}

function onData(name: string, data: string): void {
  let parsed: unknown;
  try {
    parsed = JSON.parse(data);
  } catch {
    return;
  }
  if (typeof parsed !== 'object' || parsed === null) return;
  const e = parsed as Record<string, unknown>;
  if (name === 'dropped') {
    // Each notice counts what was dropped since the previous one.
    feed.dropped += Number(e.dropped) || 0;
  } else if (e.event === 'egress.decision' || (e.event === undefined && 'verdict' in e && 'conn_id' in e)) {
    accept(e as unknown as DecisionEvent);
  }
  changed();
}

export function startFeed(): void {
  feed.stop?.();
  feed.decisions = [];
  feed.seen.clear();
  feed.perMinute.clear();
  feed.dropped = 0;
  const query = new URLSearchParams();
  for (const key of FILTERS) if (feed.filters[key]) query.set(key, feed.filters[key]);
  const qs = query.toString();
  feed.stop = stream(`/v1/events${qs ? `?${qs}` : ''}`, {
    onEvent: onData,
    onState: (state, detail) => {
      feed.state = state;
      feed.detail = detail ?? '';
      changed();
    },
  });
}

export function stopFeed(): void {
  feed.stop?.();
  feed.stop = null;
  feed.state = 'closed';
}

function ruleCell(e: DecisionEvent): HTMLElement {
  if (!e.rule) return h('span', { class: 'muted' }, e.reason === 'default' ? 'default verdict' : '—');
  return h('span', { class: 'rule-ref', title: e.rule.label ?? '' }, h('code', {}, e.rule.id));
}

function afterCell(e: DecisionEvent): HTMLElement | string {
  const a = e.after;
  if (!a) return '';
  const what = [a.tool ?? '(no tool)', a.host ? `→ ${a.host}` : '', a.server ? `on ${a.server}` : ''].filter(Boolean).join(' ');
  return h(
    'span',
    { class: 'after', title: a.call_id ? `earlier call ${a.call_id}` : 'earlier call' },
    `after ${what}, ${a.seconds_ago} s before`,
  );
}

export function verdictBadge(kind: Kind): HTMLElement {
  return h('span', { class: `badge badge-${kind}` }, KIND_LABEL[kind]);
}

function row(e: DecisionEvent): HTMLTableRowElement {
  const kind = kindOf(e);
  return h(
    'tr',
    { class: `decision decision-${kind}`, 'data-conn-id': e.conn_id, 'data-kind': kind },
    h('td', {}, time(e.time)),
    h('td', {}, verdictBadge(kind)),
    h('td', {}, h('code', {}, `${e.host}:${e.port}`), h('small', { class: 'muted' }, ` ${e.method}`)),
    h('td', {}, e.tool ?? h('span', { class: 'muted' }, 'unattributed')),
    h('td', {}, e.server ?? ''),
    h('td', {}, ruleCell(e)),
    h('td', {}, e.reason, e.address_class ? h('small', {}, ` (${e.address_class})`) : null),
    h('td', {}, afterCell(e)),
  );
}

/** Decisions per minute by verdict, the last 15 minutes, as stacked bars with a table of the same numbers. */
function chart(now: number): HTMLElement {
  const last = Math.floor(now / 60_000);
  const minutes = Array.from({ length: MINUTES }, (_, i) => last - MINUTES + 1 + i);
  const rows = minutes.map((m) => ({ m, c: feed.perMinute.get(m) ?? { allow: 0, audit: 0, deny: 0, shadow: 0 } }));
  const max = Math.max(1, ...rows.map((r) => KINDS.reduce((s, k) => s + r.c[k], 0)));
  const W = 600;
  const H = 140;
  const bw = W / MINUTES;
  const bars = rows.map((r, i) => {
    let y = H;
    const total = KINDS.reduce((s, k) => s + r.c[k], 0);
    const label = `${time(r.m * 60_000).slice(0, 5)}: ${total} decisions (${KINDS.map((k) => `${r.c[k]} ${KIND_LABEL[k]}`).join(', ')})`;
    const parts = KINDS.filter((k) => r.c[k] > 0).map((k) => {
      const hgt = (r.c[k] / max) * (H - 10);
      y -= hgt;
      return svg('rect', {
        class: `bar bar-${k}`,
        x: (i * bw + 2).toFixed(1),
        y: y.toFixed(1),
        width: (bw - 4).toFixed(1),
        height: hgt.toFixed(1),
      });
    });
    return svg('g', { 'data-minute': r.m }, svg('title', {}, label), ...parts);
  });
  // The time axis as HTML under the bars (SVG text would stretch with the chart's width).
  const axis = h(
    'div',
    { class: 'axis', 'aria-hidden': 'true' },
    ...rows.map((r) => h('span', {}, r.m % 5 === 0 || r.m === last ? time(r.m * 60_000).slice(0, 5) : '')),
  );
  const totals = Object.fromEntries(KINDS.map((k) => [k, rows.reduce((s, r) => s + r.c[k], 0)])) as Record<Kind, number>;
  return h(
    'figure',
    { class: 'chart' },
    h('figcaption', {}, `Decisions per minute, last ${MINUTES} minutes (tallest bar: ${max})`),
    svg(
      'svg',
      { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'decisions per minute by verdict', preserveAspectRatio: 'none' },
      ...bars,
    ),
    axis,
    h(
      'table',
      { class: 'chart-totals' },
      h('caption', { class: 'sr-only' }, `Totals for the last ${MINUTES} minutes`),
      h('tr', {}, ...KINDS.map((k) => h('th', { scope: 'col' }, h('span', { class: `swatch swatch-${k}` }), KIND_LABEL[k]))),
      h('tr', {}, ...KINDS.map((k) => h('td', { 'data-kind': k, class: 'count' }, totals[k]))),
    ),
  );
}

export const events: View = {
  title: 'Events',
  mount(root: HTMLElement, _ctx: Context) {
    const inputs = {
      verdict: h(
        'select',
        { name: 'verdict' },
        h('option', { value: '' }, 'any'),
        h('option', { value: 'allow' }, 'allow'),
        h('option', { value: 'audit' }, 'audit'),
        h('option', { value: 'deny' }, 'deny (refused and would deny)'),
      ),
      tool: h('input', { name: 'tool', placeholder: 'any' }),
      server: h('input', { name: 'server', placeholder: 'any' }),
      host: h('input', { name: 'host', placeholder: 'any' }),
    };
    for (const key of FILTERS) inputs[key].value = feed.filters[key];
    const form = h(
      'form',
      { class: 'filters', 'aria-label': 'Filters' },
      field('Verdict', inputs.verdict),
      field('Tool', inputs.tool),
      field('Server', inputs.server),
      field('Host', inputs.host),
      h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Apply filters')),
    );
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      for (const key of FILTERS) feed.filters[key] = inputs[key].value.trim();
      startFeed();
    });
    const status = h('p', { class: 'feed-status', 'aria-live': 'polite' });
    const chartBox = h('div', { class: 'chart-box' });
    const list = h('div', { class: 'feed' });
    const render = () => {
      clear(
        status,
        h('span', { class: `dot dot-${feed.state}` }),
        feed.state === 'open'
          ? 'Live'
          : feed.state === 'refused'
            ? `Feed refused: ${feed.detail}`
            : feed.state === 'connecting'
              ? 'Connecting…'
              : `Disconnected${feed.detail ? ` (${feed.detail})` : ''}; retrying`,
        ` · ${feed.decisions.length} decisions held`,
        feed.dropped > 0 ? h('strong', { class: 'warn' }, ` · ${feed.dropped} dropped by the proxy (this tab fell behind)`) : null,
      );
      clear(chartBox, chart(Date.now()));
      const shown = feed.decisions.slice(-200).reverse();
      clear(
        list,
        table(
          ['Time (UTC)', 'Verdict', 'Destination', 'Tool', 'Server', 'Rule', 'Reason', 'Sequence'],
          shown.map(row),
          `Newest first (${shown.length} of ${feed.decisions.length})`,
        ),
      );
    };
    feed.onChange = render;
    if (!feed.stop) startFeed();
    root.append(form, status, chartBox, list);
    render();
    // The chart's minutes move on even without traffic.
    const tick = setInterval(render, 15_000);
    return () => {
      feed.onChange = null;
      clearInterval(tick);
    };
  },
};
