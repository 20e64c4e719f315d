/**
 * Test: a dry run (`POST /v1/test`) of one call against the live policy or a draft, with the
 * decision and its trace laid out per candidate address; and Replay (`POST /v1/test/replay`):
 * the draft against the last N recorded decisions, listing the calls whose verdict would
 * change. Both are developer routes (a dry run resolves names); a viewer sees why not.
 *
 * Over 300 lines: two forms (dry run, replay) and the per-address trace table, built with DOM
 * calls only (no innerHTML), which is verbose by design.
 */
import { api } from '../api.js';
import type { Context, View } from '../context.js';
import { isDeveloper } from '../context.js';
import { clear, dateTime, field, h, notice, table } from '../dom.js';
import { explain } from '../explain.js';
import { policyYaml } from '../policy-model.js';
import { kindOf, verdictBadge } from './events.js';
import { loadPolicy } from './policy.js';

interface RuleRef {
  id: string;
  label: string | null;
  priority: number;
}
interface TraceEntry {
  address: string | null;
  verdict: string;
  decided_by: string;
  rule: RuleRef | null;
  dispatched: boolean;
  shadow: boolean;
  address_class?: string;
  after?: { tool: string | null; seconds_ago: number; host: string | null; call_id: string | null };
  not_matched?: Array<{ rule: string; why: string }>;
}
interface Decision {
  verdict: string;
  dispatched: boolean;
  shadow: boolean;
  reason: string;
  rule: RuleRef | null;
  addresses: string[];
  trace: TraceEntry[];
  after: { tool: string | null; seconds_ago: number; host: string | null; call_id: string | null } | null;
  address_class?: string;
}
interface Verdicts {
  verdict: string;
  dispatched: boolean;
  shadow?: boolean;
  reason?: string;
  rule: RuleRef | null;
}
interface ReplayCall {
  conn_id: string;
  at: string | number;
  tool: string | null;
  server: string | null;
  host: string;
  port: number;
  /** null: could not be decided again without DNS (unresolved). */
  live: Verdicts | null;
  draft: Verdicts | null;
}
interface ReplayAnswer {
  calls: ReplayCall[];
  changed: string[];
  unresolved?: string[];
}

/** `host=ip,ip` lines → the `resolve` object. */
export function parseResolve(text: string): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const line of text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)) {
    const eq = line.indexOf('=');
    if (eq < 1) throw new Error(`resolve: '${line}' is not HOST=IP[,IP...]`);
    out[line.slice(0, eq).trim()] = line
      .slice(eq + 1)
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  }
  return out;
}

/** `tool=T,seconds_ago=N[,server=S][,host=H][,address=IP][,call_id=C][,refused]` lines (as `test --earlier`) → `history`. */
export function parseHistory(text: string): Array<Record<string, unknown>> {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .map((line) => {
      const call: Record<string, unknown> = {};
      for (const part of line.split(',').map((s) => s.trim())) {
        if (part === 'refused') {
          call.dispatched = false;
          continue;
        }
        const eq = part.indexOf('=');
        if (eq < 1) throw new Error(`history: '${part}' in '${line}' is not KEY=VALUE`);
        const key = part.slice(0, eq);
        const value = part.slice(eq + 1);
        call[key] = key === 'seconds_ago' ? Number(value) : value;
      }
      return call;
    });
}

const ruleText = (r: RuleRef | null): HTMLElement =>
  r ? h('code', { title: r.label ?? '' }, r.id) : h('span', { class: 'muted' }, 'none');

function decisionView(d: Decision): HTMLElement {
  const kind = kindOf(d);
  const trace = d.trace.map((t) =>
    h(
      'tr',
      { 'data-address': t.address ?? '' },
      h('td', {}, t.address ? h('code', {}, t.address) : h('span', { class: 'muted' }, 'by name, before DNS')),
      h('td', {}, verdictBadge(kindOf(t))),
      h('td', {}, t.decided_by, t.address_class ? ` (${t.address_class})` : ''),
      h('td', {}, ruleText(t.rule)),
      h(
        'td',
        {},
        t.after ? `after ${t.after.tool ?? '(no tool)'}${t.after.host ? ` → ${t.after.host}` : ''}, ${t.after.seconds_ago} s before` : '',
      ),
      h(
        'td',
        {},
        t.not_matched?.length
          ? h('ul', { class: 'not-matched' }, ...t.not_matched.map((n) => h('li', {}, h('code', {}, n.rule), `: ${n.why}`)))
          : '',
      ),
    ),
  );
  return h(
    'div',
    { class: `decision-card decision-${kind}`, 'data-verdict': d.verdict, 'data-kind': kind },
    h(
      'p',
      { class: 'decision-line' },
      verdictBadge(kind),
      d.dispatched ? ' dispatched' : '',
      ' · reason ',
      h('code', {}, d.reason),
      ' · rule ',
      ruleText(d.rule),
      d.rule?.label ? ` (${d.rule.label})` : '',
      d.address_class ? ` · address class ${d.address_class}` : '',
    ),
    d.after
      ? h(
          'p',
          {},
          `Sequence clause matched the earlier call ${d.after.tool ?? '(no tool)'}${d.after.call_id ? ` (${d.after.call_id})` : ''}, ${d.after.seconds_ago} s before.`,
        )
      : null,
    h(
      'p',
      {},
      'Candidate addresses: ',
      d.addresses.length ? h('code', {}, d.addresses.join(', ')) : h('span', { class: 'muted' }, 'none (decided by name)'),
    ),
    table(
      ['Address', 'Verdict', 'Decided by', 'Rule', 'Sequence', 'Rules before it, and why they did not match'],
      trace,
      'Trace, per candidate address',
    ),
  );
}

function verdictsCell(v: Verdicts | null): HTMLElement {
  if (v === null) return h('span', { class: 'muted' }, 'unresolved (needs DNS)');
  return h(
    'span',
    {},
    verdictBadge(kindOf({ verdict: v.verdict, shadow: v.shadow ?? false, dispatched: v.dispatched })),
    ' ',
    v.rule ? h('code', { title: v.rule.label ?? '' }, v.rule.id) : h('span', { class: 'muted' }, v.reason ?? 'default'),
  );
}

function replayView(answer: ReplayAnswer, showAll: boolean): HTMLElement {
  const changed = new Set(answer.changed);
  const shown = showAll ? answer.calls : answer.calls.filter((c) => changed.has(c.conn_id));
  const rows = shown.map((c) =>
    h(
      'tr',
      { 'data-conn-id': c.conn_id, class: changed.has(c.conn_id) ? 'changed' : '' },
      h('td', {}, dateTime(c.at)),
      h('td', {}, c.tool ?? h('span', { class: 'muted' }, 'unattributed')),
      h('td', {}, c.server ?? ''),
      h('td', {}, h('code', {}, `${c.host}:${c.port}`)),
      h('td', { class: 'live' }, verdictsCell(c.live)),
      h('td', { class: 'draft' }, verdictsCell(c.draft)),
    ),
  );
  return h(
    'div',
    { class: 'replay-result' },
    h(
      'p',
      { class: 'replay-summary', 'data-changed': answer.changed.length, 'data-total': answer.calls.length },
      h('strong', {}, `${answer.changed.length} of ${answer.calls.length}`),
      ' replayed calls would change verdict under the draft.',
      answer.unresolved?.length ? ` ${answer.unresolved.length} could not be decided again without DNS.` : '',
    ),
    rows.length
      ? table(
          ['When', 'Tool', 'Server', 'Destination', 'Live', 'Draft'],
          rows,
          showAll ? 'Every replayed call (changed ones marked)' : 'Calls whose verdict would change',
        )
      : notice('ok', 'No recorded call would change.'),
  );
}

export const test: View = {
  title: 'Test',
  mount(root: HTMLElement, ctx: Context) {
    if (!isDeveloper(ctx)) {
      root.append(
        notice(
          'info',
          'Test and Replay need a developer token: a dry run makes the proxy resolve names, so the API refuses it to viewers.',
        ),
      );
      return;
    }
    const useDraft = h('input', { type: 'checkbox', name: 'use_draft' });
    const draft = h('textarea', { name: 'draft', rows: 12, spellcheck: 'false', class: 'code', placeholder: 'version: 1\nrules: ...' });
    const fromLive = h('button', { type: 'button' }, 'Start from the live policy');
    fromLive.addEventListener('click', () => {
      void loadPolicy().then(
        (p) => {
          draft.value = policyYaml(p);
          useDraft.checked = true;
        },
        (err) => clear(out, explain(err)),
      );
    });
    const destination = h('input', { name: 'destination', required: true, placeholder: 'api.example.com:443, or a URL', class: 'wide' });
    const tool = h('input', { name: 'tool', placeholder: 'none: unattributed' });
    const server = h('input', { name: 'server', placeholder: 'client identity' });
    const session = h('input', { name: 'session_id', placeholder: 'live history of this session' });
    const resolve = h('textarea', { name: 'resolve', rows: 2, spellcheck: 'false', placeholder: 'api.example.com=93.184.216.34' });
    const history = h('textarea', { name: 'history', rows: 2, spellcheck: 'false', placeholder: 'tool=read_file,seconds_ago=30' });
    const out = h('div', { class: 'test-result', 'aria-live': 'polite' });
    const form = h(
      'form',
      { class: 'test-form', 'aria-label': 'Dry run' },
      h(
        'fieldset',
        {},
        h('legend', {}, 'Policy'),
        h('label', { class: 'check' }, useDraft, ' Use the draft below (otherwise the live policy)'),
        field('Draft policy (YAML)', draft),
        h('div', { class: 'actions' }, fromLive),
      ),
      h(
        'fieldset',
        {},
        h('legend', {}, 'The call'),
        field('Destination', destination),
        h('div', { class: 'grid' }, field('Tool', tool), field('Server', server), field('Session', session)),
      ),
      h(
        'div',
        { class: 'grid' },
        field('Resolve', resolve, 'HOST=IP[,IP...] per line; others are resolved by the proxy'),
        field('History', history, 'tool=T,seconds_ago=N[,server=S][,host=H][,address=IP][,refused] per line'),
      ),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Run the test')),
    );
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const body: Record<string, unknown> = { destination: destination.value.trim() };
      try {
        if (useDraft.checked) body.policy = draft.value;
        if (tool.value.trim()) body.tool = tool.value.trim();
        if (server.value.trim()) body.server = server.value.trim();
        if (session.value.trim()) body.session_id = session.value.trim();
        if (resolve.value.trim()) body.resolve = parseResolve(resolve.value);
        if (history.value.trim()) body.history = parseHistory(history.value);
      } catch (err) {
        clear(out, notice('error', (err as Error).message));
        return;
      }
      clear(out, h('p', { class: 'muted' }, 'Deciding…'));
      api<Decision & { error?: string }>('POST', '/v1/test', { json: body }).then(
        (d) => clear(out, d.error ? notice('error', `DNS: ${d.error}`) : decisionView(d)),
        (err) => clear(out, explain(err)),
      );
    });

    const limit = h('input', { name: 'limit', type: 'number', min: 1, max: 1000, value: 1000 });
    const showAll = h('input', { type: 'checkbox', name: 'show_all' });
    const replayOut = h('div', { class: 'replay-out', 'aria-live': 'polite' });
    let last: ReplayAnswer | null = null;
    showAll.addEventListener('change', () => last && clear(replayOut, replayView(last, showAll.checked)));
    const replay = h(
      'form',
      { class: 'replay-form', 'aria-labelledby': 'replay-title' },
      h('h3', { id: 'replay-title' }, 'Replay the draft against recent decisions'),
      h(
        'p',
        { class: 'muted' },
        'Each recorded decision is decided again under the draft above, with the addresses and history it had: no DNS, no traffic.',
      ),
      h('div', { class: 'grid' }, field('Last N decisions', limit), h('label', { class: 'check' }, showAll, ' Show every replayed call')),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Replay')),
    );
    replay.addEventListener('submit', (e) => {
      e.preventDefault();
      if (!draft.value.trim()) {
        clear(replayOut, notice('error', 'Write a draft policy above first (or start from the live policy and change it).'));
        return;
      }
      clear(replayOut, h('p', { class: 'muted' }, 'Replaying…'));
      api<ReplayAnswer>('POST', '/v1/test/replay', { json: { policy: draft.value, limit: Number(limit.value) } }).then(
        (answer) => {
          last = answer;
          clear(replayOut, replayView(answer, showAll.checked));
        },
        (err) => clear(replayOut, explain(err)),
      );
    });
    root.append(form, out, replay, replayOut);
  },
};
