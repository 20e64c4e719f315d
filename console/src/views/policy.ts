/**
 * Policy: the serving policy (generation, digest, source, modes), its rules in evaluation order,
 * the last rejected reload with its positions; for a developer, adding, editing and deleting
 * rules and switching shadow and observe mode. Every write sends `If-Match` with the digest this
 * page loaded, so a change made meanwhile (another operator, an edit of the file) is a 412 shown
 * as a conflict, never silently overwritten.
 */
import { api } from '../api.js';
import type { Context, View } from '../context.js';
import { isDeveloper } from '../context.js';
import { clear, dateTime, h, notice, table } from '../dom.js';
import { explain } from '../explain.js';
import { evaluationOrder, skipped } from '../policy-model.js';
import type { PolicyJson, RuleJson } from '../policy-model.js';
import { ruleForm } from '../rule-form.js';
import type { RuleBody } from '../rule-form.js';

export async function loadPolicy(): Promise<PolicyJson> {
  return api<PolicyJson>('GET', '/v1/policy');
}

/** A write answered 200 `{generation, sha256}`. */
interface WriteAnswer {
  generation?: number;
  sha256?: string;
}

function lists(r: RuleJson): HTMLElement | string {
  if (!r.egress) return h('span', { class: 'muted' }, 'every destination');
  return h(
    'div',
    { class: 'lists' },
    r.egress.allow.length ? h('div', {}, h('small', {}, 'allow '), h('code', {}, r.egress.allow.join(', '))) : null,
    r.egress.deny.length ? h('div', {}, h('small', {}, 'deny '), h('code', {}, r.egress.deny.join(', '))) : null,
  );
}

function afterText(r: RuleJson): string {
  const a = r.after;
  if (!a) return '';
  return `after ${a.tool_name_glob}${a.server_glob !== '*' ? ` on ${a.server_glob}` : ''}${a.hosts ? ` to ${a.hosts.join(', ')}` : ''} within ${a.within_seconds} s`;
}

export const policy: View = {
  title: 'Policy',
  mount(root: HTMLElement, ctx: Context) {
    const dev = isDeveloper(ctx);
    const message = h('div', { class: 'messages', 'aria-live': 'polite' });
    const summary = h('div', { class: 'summary' });
    const editor = h('div', { class: 'editor' });
    const rulesBox = h('div', { class: 'rules' });
    root.append(message, summary, editor, rulesBox);
    let current: PolicyJson | null = null;

    const reload = async (keepMessage = false) => {
      if (!keepMessage) message.replaceChildren();
      try {
        current = await loadPolicy();
        render(current);
      } catch (err) {
        clear(message, explain(err));
      }
    };

    /** One write with the digest this page holds; success reloads the view. */
    const write = async (what: string, method: string, path: string, json: unknown): Promise<boolean> => {
      if (!current) return false;
      try {
        const answer = await api<WriteAnswer>(method, path, { json, ifMatch: current.sha256 });
        clear(
          message,
          notice('ok', `${what}: generation ${answer.generation ?? '?'} loaded (sha256 ${String(answer.sha256 ?? '').slice(0, 12)}).`),
        );
        editor.replaceChildren();
        await reload(true);
        return true;
      } catch (err) {
        clear(
          message,
          explain(err, () => void reload()),
        );
        message.querySelector<HTMLElement>('[role=alert]')?.focus();
        return false;
      }
    };

    const openForm = (rule: Partial<RuleJson> | null) => {
      const editing = rule !== null && typeof rule.id === 'string';
      const form = ruleForm({
        initial: rule ?? { priority: nextPriority(current), verdict: 'allow' },
        editing,
        submitLabel: editing ? 'Save rule' : 'Add rule',
        onSubmit: async (body: RuleBody) => {
          if (editing) await write(`Rule ${String(body.id)} saved`, 'PUT', `/v1/rules/${encodeURIComponent(String(rule?.id))}`, body);
          else await write(`Rule ${String(body.id)} added`, 'POST', '/v1/rules', body);
        },
        onCancel: () => editor.replaceChildren(),
      });
      clear(editor, h('h3', {}, editing ? `Edit rule ${rule?.id}` : 'New rule'), form);
      form.querySelector<HTMLInputElement>(editing ? 'input[name=priority]' : 'input[name=id]')?.focus();
    };

    const render = (p: PolicyJson) => {
      const modes = dev
        ? h(
            'div',
            { class: 'modes actions', role: 'group', 'aria-label': 'Modes' },
            h(
              'button',
              {
                type: 'button',
                'data-action': 'shadow',
                onclick: () =>
                  void write(`Shadow mode ${p.shadow_mode ? 'off' : 'on'}`, 'PATCH', '/v1/policy', { shadow_mode: !p.shadow_mode }),
              },
              p.shadow_mode ? 'Enforce (shadow mode off)' : 'Shadow mode on',
            ),
            h(
              'button',
              {
                type: 'button',
                'data-action': 'observe',
                onclick: () =>
                  void write(`Observe mode ${p.observe_mode ? 'off' : 'on'}`, 'PATCH', '/v1/policy', { observe_mode: !p.observe_mode }),
              },
              p.observe_mode ? 'Observe mode off' : 'Observe mode on',
            ),
            h(
              'button',
              {
                type: 'button',
                'data-action': 'default',
                onclick: () =>
                  void write('Default verdict changed', 'PATCH', '/v1/policy', {
                    default_verdict: p.default_verdict === 'deny' ? 'allow' : 'deny',
                  }),
              },
              `Set the default verdict to ${p.default_verdict === 'deny' ? 'allow' : 'deny'}`,
            ),
            h('button', { type: 'button', onclick: () => openForm(null), class: 'primary', 'data-action': 'add-rule' }, 'Add rule'),
            h(
              'button',
              {
                type: 'button',
                onclick: () =>
                  void api('POST', '/v1/reload').then(
                    () => reload(),
                    (err) => clear(message, explain(err)),
                  ),
              },
              'Reload from file',
            ),
          )
        : h('p', { class: 'muted' }, 'Viewer: read only. Changing the policy needs a developer token.');
      clear(
        summary,
        h(
          'dl',
          { class: 'facts' },
          h('dt', {}, 'Generation'),
          h('dd', { 'data-fact': 'generation' }, p.generation),
          h('dt', {}, 'Digest'),
          h('dd', { 'data-fact': 'digest' }, h('code', { title: p.sha256 }, p.sha256.slice(0, 12))),
          h('dt', {}, 'Loaded'),
          h('dd', {}, dateTime(p.loaded_at)),
          h('dt', {}, 'Source'),
          h('dd', {}, h('code', {}, p.source)),
          h('dt', {}, 'Default verdict'),
          h('dd', { 'data-fact': 'default_verdict' }, p.default_verdict),
          h('dt', {}, 'Shadow mode'),
          h(
            'dd',
            { 'data-fact': 'shadow_mode' },
            p.shadow_mode ? 'on: refusals are logged as [shadow] would deny, not enforced' : 'off (enforcing)',
          ),
          h('dt', {}, 'Observe mode'),
          h('dd', { 'data-fact': 'observe_mode' }, p.observe_mode ? 'on' : 'off'),
          h('dt', {}, 'Rules'),
          h('dd', {}, `${p.egress_rules} egress rules evaluated, ${p.skipped_rules} skipped`),
        ),
        p.warnings.length
          ? notice('warn', h('ul', {}, ...p.warnings.map((w) => h('li', {}, typeof w === 'string' ? w : JSON.stringify(w)))))
          : null,
        p.last_error
          ? notice(
              'error',
              h('strong', {}, `Last reload rejected at ${dateTime(p.last_error.at)}; generation ${p.generation} keeps serving.`),
              h('ul', { class: 'positions' }, ...p.last_error.errors.map((e) => h('li', {}, h('code', {}, e)))),
            )
          : null,
        modes,
      );
      const headers = ['#', 'Priority', 'Id', 'Label', 'Verdict', 'Tool', 'Server', 'Ports', 'Destinations', 'Sequence'];
      if (dev) headers.push('Change');
      const rows = evaluationOrder(p.rules).map((r, i) => {
        const skip = skipped(r);
        return h(
          'tr',
          { 'data-rule-id': r.id, class: skip ? 'skipped' : '' },
          h('td', {}, skip ? '–' : i + 1),
          h('td', {}, r.priority),
          h('td', {}, h('code', {}, r.id)),
          h('td', {}, r.label ?? '', skip ? h('small', { class: 'muted' }, ` (skipped: ${skip})`) : null),
          h(
            'td',
            {},
            h('span', { class: `badge badge-${r.verdict === 'deny' ? 'deny' : r.verdict === 'audit' ? 'audit' : 'allow'}` }, r.verdict),
          ),
          h('td', {}, h('code', {}, r.tool_name_glob)),
          h('td', {}, h('code', {}, r.server_glob)),
          h('td', {}, r.ports ? r.ports.join(', ') : 'all'),
          h('td', {}, lists(r)),
          h('td', {}, afterText(r)),
          dev
            ? h(
                'td',
                { class: 'row-actions' },
                h('button', { type: 'button', onclick: () => openForm(r), 'aria-label': `Edit rule ${r.id}` }, 'Edit'),
                h(
                  'button',
                  {
                    type: 'button',
                    class: 'danger',
                    'aria-label': `Delete rule ${r.id}`,
                    onclick: () => {
                      if (confirm(`Delete rule ${r.id}? The file is rewritten and a new generation loaded.`))
                        void write(`Rule ${r.id} deleted`, 'DELETE', `/v1/rules/${encodeURIComponent(r.id)}`, undefined);
                    },
                  },
                  'Delete',
                ),
              )
            : null,
        );
      });
      clear(
        rulesBox,
        table(headers, rows, `Rules in evaluation order (lowest priority first; ties in file order); default: ${p.default_verdict}`),
      );
    };

    void reload();
  },
};

/** A priority for a new rule: just before the first catch-all deny (no list, any tool, any server), else after the last rule. */
export function nextPriority(p: PolicyJson | null): number {
  if (!p || p.rules.length === 0) return 100;
  const catchAll = evaluationOrder(p.rules).find(
    (r) => skipped(r) === null && r.verdict === 'deny' && !r.egress && r.tool_name_glob === '*' && r.server_glob === '*' && !r.after,
  );
  if (catchAll) return catchAll.priority - 1;
  return Math.max(...p.rules.map((r) => r.priority)) + 10;
}
