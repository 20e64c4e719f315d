/**
 * Discovered: what observe mode recorded, as a tree server → tool → host:port; the draft
 * allow-list (`GET /v1/discovered?format=yaml`) to download; and, for a developer, from any
 * destination a proposed allow rule that is added in shadow mode first: if the serving policy
 * enforces, the console first turns `shadow_mode` on (`PATCH /v1/policy`), then adds the rule
 * (`POST /v1/rules`), each write with `If-Match`. Shadow mode is policy-wide (the policy has no
 * per-rule shadow), so from then on every deny is logged as "[shadow] would deny" instead of
 * refused until a developer enforces again in Policy; the SSRF baseline stays enforced.
 */
import { api, apiText } from '../api.js';
import type { Context, View } from '../context.js';
import { isDeveloper } from '../context.js';
import { clear, dateTime, h, notice } from '../dom.js';
import { explain } from '../explain.js';
import type { PolicyJson, RuleJson } from '../policy-model.js';
import { ruleForm } from '../rule-form.js';
import { loadPolicy, nextPriority } from './policy.js';

interface Destination {
  server: string;
  tool: string | null;
  host: string;
  port: number;
  count: number;
  first_seen: string;
  last_seen: string;
}

/** A name with `*` or `?` would act as a glob and allow more than was seen (globs have no escape): never proposed as one. */
const isGlobSafe = (name: string): boolean => !/[*?]/.test(name);

function slug(text: string): string {
  return text
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 40);
}

export function proposedRule(d: Destination, p: PolicyJson | null): Partial<RuleJson> {
  return {
    id: `allow-${slug(d.tool ?? 'unattributed')}-${slug(d.host)}-${d.port}`.slice(0, 120),
    priority: nextPriority(p),
    label: `Seen from ${d.server}${d.tool ? ` / ${d.tool}` : ''} to ${d.host}:${d.port}`,
    verdict: 'allow',
    stage: 'egress',
    tool_name_glob: d.tool === null ? '*' : isGlobSafe(d.tool) ? d.tool : '',
    server_glob: isGlobSafe(d.server) ? d.server : '',
    egress: { allow: [d.host], deny: [] },
    ports: [d.port],
    after: null,
  };
}

function group(destinations: Destination[]): Map<string, Map<string, Destination[]>> {
  const tree = new Map<string, Map<string, Destination[]>>();
  const sorted = [...destinations].sort(
    (a, b) =>
      a.server.localeCompare(b.server) || (a.tool ?? '').localeCompare(b.tool ?? '') || a.host.localeCompare(b.host) || a.port - b.port,
  );
  for (const d of sorted) {
    const tools = tree.get(d.server) ?? new Map<string, Destination[]>();
    const key = d.tool ?? '';
    tools.set(key, [...(tools.get(key) ?? []), d]);
    tree.set(d.server, tools);
  }
  return tree;
}

export const discovered: View = {
  title: 'Discovered',
  mount(root: HTMLElement, ctx: Context) {
    const dev = isDeveloper(ctx);
    const message = h('div', { class: 'messages', 'aria-live': 'polite' });
    const editor = h('div', { class: 'editor' });
    const treeBox = h('div', { class: 'tree-box' });
    const draftBox = h('div', { class: 'draft-box' });
    root.append(message, editor, treeBox, draftBox);

    const download = async () => {
      try {
        const text = await apiText('/v1/discovered?format=yaml');
        const url = URL.createObjectURL(new Blob([text], { type: 'application/yaml' }));
        const a = h('a', { href: url, download: 'draft-policy.yaml', class: 'sr-only' }, 'download');
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10_000);
        clear(
          draftBox,
          h(
            'details',
            {},
            h('summary', {}, 'The draft allow-list (also downloaded as draft-policy.yaml)'),
            h('pre', { class: 'yaml' }, text),
          ),
        );
      } catch (err) {
        clear(message, explain(err));
      }
    };

    const propose = async (d: Destination) => {
      let p: PolicyJson | null = null;
      try {
        p = await loadPolicy();
      } catch (err) {
        clear(message, explain(err));
        return;
      }
      const unsafe = (d.tool !== null && !isGlobSafe(d.tool)) || !isGlobSafe(d.server);
      const note = h(
        'div',
        {},
        unsafe
          ? notice(
              'warn',
              'This tool or server name contains * or ?, which would act as a glob and allow more than was seen: write the glob yourself.',
            )
          : null,
        p.shadow_mode
          ? notice('info', 'The policy is already in shadow mode: only the rule is added.')
          : notice(
              'warn',
              h('strong', {}, 'Shadow first: '),
              'the policy enforces now. Adding turns shadow_mode on first (policy-wide: every deny is then logged as [shadow] would deny instead of refused, the SSRF baseline excepted), then adds this rule. Enforce again in Policy once the Events view shows nothing unexpected.',
            ),
      );
      const form = ruleForm({
        initial: proposedRule(d, p),
        editing: false,
        submitLabel: p.shadow_mode ? 'Add rule' : 'Switch to shadow mode and add rule',
        note,
        onCancel: () => editor.replaceChildren(),
        onSubmit: async (body) => {
          let switched = false;
          try {
            // The digest the proposal was made under: a policy changed meanwhile is a 412, shown as a conflict.
            let sha = (p as PolicyJson).sha256;
            if (!(p as PolicyJson).shadow_mode) {
              const answer = await api<{ sha256: string }>('PATCH', '/v1/policy', { json: { shadow_mode: true }, ifMatch: sha });
              sha = answer.sha256;
              switched = true;
            }
            const answer = await api<{ generation: number; sha256: string }>('POST', '/v1/rules', { json: body, ifMatch: sha });
            editor.replaceChildren();
            clear(
              message,
              notice(
                'ok',
                `Rule ${String(body.id)} added in shadow mode: generation ${answer.generation} (sha256 ${answer.sha256.slice(0, 12)}). Watch Events for [shadow] would deny, then enforce in Policy.`,
                ' ',
                h('a', { href: '#policy' }, 'Open Policy'),
              ),
            );
          } catch (err) {
            clear(
              message,
              switched ? notice('warn', 'The policy was switched to shadow mode, but the rule was not added:') : null,
              explain(err, () => void propose(d)),
            );
          }
        },
      });
      clear(editor, h('h3', {}, `Proposed rule for ${d.host}:${d.port}`), form);
      form.querySelector<HTMLInputElement>('input[name=id]')?.focus();
    };

    const render = (destinations: Destination[]) => {
      const tree = group(destinations);
      const servers = [...tree.entries()].map(([server, tools]) =>
        h(
          'li',
          { 'data-server': server },
          h(
            'details',
            { open: true },
            h('summary', {}, h('strong', {}, server), h('small', { class: 'muted' }, ` ${tools.size} tool(s)`)),
            h(
              'ul',
              {},
              ...[...tools.entries()].map(([tool, dests]) =>
                h(
                  'li',
                  { 'data-tool': tool },
                  h(
                    'details',
                    { open: true },
                    h(
                      'summary',
                      {},
                      tool ? h('code', {}, tool) : h('span', { class: 'muted' }, 'unattributed'),
                      h('small', { class: 'muted' }, ` ${dests.length} destination(s)`),
                    ),
                    h(
                      'ul',
                      { class: 'destinations' },
                      ...dests.map((d) =>
                        h(
                          'li',
                          { 'data-destination': `${d.host}:${d.port}` },
                          h('code', {}, `${d.host}:${d.port}`),
                          h('small', { class: 'muted' }, ` ${d.count}× · first ${dateTime(d.first_seen)} · last ${dateTime(d.last_seen)} `),
                          dev
                            ? h(
                                'button',
                                {
                                  type: 'button',
                                  class: 'small',
                                  onclick: () => void propose(d),
                                  'aria-label': `Propose a rule for ${d.host}:${d.port} from ${tool || 'unattributed'} on ${server}`,
                                },
                                'Propose rule',
                              )
                            : null,
                        ),
                      ),
                    ),
                  ),
                ),
              ),
            ),
          ),
        ),
      );
      clear(
        treeBox,
        h(
          'div',
          { class: 'actions' },
          h('button', { type: 'button', onclick: () => void load() }, 'Refresh'),
          h('button', { type: 'button', onclick: () => void download(), 'data-action': 'download' }, 'Download the draft allow-list'),
        ),
        destinations.length === 0
          ? notice('info', 'Nothing discovered yet. Observe mode (Policy) records every call no rule covers.')
          : h('ul', { class: 'tree', 'aria-label': 'server, tool, destination' }, ...servers),
      );
    };

    const load = async () => {
      try {
        const answer = await api<{ destinations: Destination[] }>('GET', '/v1/discovered');
        render(answer.destinations);
      } catch (err) {
        clear(message, explain(err));
      }
    };
    void load();
  },
};
