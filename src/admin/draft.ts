/**
 * Observe mode's output turned into a draft allow-list policy: one allow rule per (server, tool)
 * listing the hosts and ports seen, then a catch-all deny. Calls with no tool get a `*` rule,
 * placed last among the allows (only `*` matches unattributed traffic). The draft passes
 * `check`; an operator reviews it, rolls it out in shadow mode, then enforces it.
 *
 * Threat: every name in the draft was chosen by a client (the guarded server picks its tool name
 * and, without `auth.users`, its user name). Written into `tool_name_glob` or `server_glob`, a
 * name such as `*` or `read_*` would become a glob that allows far more than was observed, and
 * globs have no escape syntax (policy.md "Globs"), so such a name cannot be written literally.
 * A (server, tool) pair with `*` or `?` in either name is therefore left out of the rules and
 * listed in a comment instead, with every name escaped so that no quote, newline or YAML
 * special can add structure to the document. Hosts are canonical destinations (net/address)
 * and are re-checked as such before they are written.
 */
import { stringify } from 'yaml';
import { canonicalHost } from '../net/address.js';
import type { DiscoveredDestination } from '../state/discovered.js';

interface Group {
  server: string;
  tool: string | null;
  hosts: Set<string>;
  ports: Set<number>;
  count: number;
}

const GLOB_CHARACTERS = /[*?]/;
/** Longest name shown in a label or comment; the rule's globs keep the name whole. */
const SHOWN_NAME = 64;

/**
 * `text` as a double-quoted string of printable ASCII: anything else (quotes, backslashes,
 * line breaks of every kind, control and non-ASCII characters) escaped, and long names cut.
 * Safe inside a YAML comment, where no escaping exists.
 */
export function printable(text: string): string {
  const cut = text.length > SHOWN_NAME ? `${text.slice(0, SHOWN_NAME)}...` : text;
  let out = '"';
  for (const ch of cut) {
    const code = ch.codePointAt(0) as number;
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (code >= 0x20 && code < 0x7f) out += ch;
    else out += code > 0xffff ? `\\u{${code.toString(16)}}` : `\\u${code.toString(16).padStart(4, '0')}`;
  }
  return `${out}"`;
}

/** Why a group cannot become a rule, or null when it can. */
function leftOutReason(g: Group): string | null {
  if (GLOB_CHARACTERS.test(g.server)) return 'the server name contains * or ?';
  if (g.tool !== null && GLOB_CHARACTERS.test(g.tool)) return 'the tool name contains * or ?';
  return null;
}

function describe(g: Group): string {
  return `server ${printable(g.server)}, ${g.tool === null ? 'unattributed calls' : `tool ${printable(g.tool)}`} (${g.count} calls)`;
}

export function draftPolicy(destinations: readonly DiscoveredDestination[], now = new Date()): string {
  const groups = new Map<string, Group>();
  const badHosts = new Set<string>();
  for (const d of destinations) {
    // Defence in depth: only a canonical host name or IP literal is written as an entry; anything
    // else would fail `check`, or (a `*.` wildcard, a CIDR) allow more than was seen.
    const canonical = canonicalHost(d.host);
    if (canonical.kind === 'error' || canonical.host !== d.host) {
      badHosts.add(d.host);
      continue;
    }
    const key = `${d.server}\u0000${d.tool ?? '\u0001'}`;
    const group = groups.get(key) ?? { server: d.server, tool: d.tool, hosts: new Set(), ports: new Set(), count: 0 };
    group.hosts.add(d.host);
    group.ports.add(d.port);
    group.count += d.count;
    groups.set(key, group);
  }
  const ordered = [...groups.values()].sort(
    (a, b) =>
      Number(a.tool === null) - Number(b.tool === null) || a.server.localeCompare(b.server) || (a.tool ?? '').localeCompare(b.tool ?? ''),
  );
  const writable = ordered.filter((g) => leftOutReason(g) === null);
  const leftOut = ordered.filter((g) => leftOutReason(g) !== null);
  const rules = writable.map((g, i) => ({
    id: `discovered-${i + 1}`,
    priority: 100 + i * 10,
    label: `Seen from ${describe(g)}`,
    verdict: 'allow',
    tool_name_glob: g.tool ?? '*',
    server_glob: g.server,
    ports: [...g.ports].sort((a, b) => a - b),
    egress: { allow: [...g.hosts].sort() },
  }));
  const policy = {
    version: 1,
    default_verdict: 'deny',
    shadow_mode: true,
    observe_mode: false,
    rules: [...rules, { id: 'deny-everything-else', priority: 10_000, label: 'Deny all other outbound destinations', verdict: 'deny' }],
  };
  const header = [
    `# Draft allow-list generated ${now.toISOString()} from ${destinations.length} discovered destinations.`,
    '# Review it, load it with shadow_mode: true and watch for "[shadow] would deny", then set',
    '# shadow_mode: false to enforce. Server and tool names are written as literal globs.',
  ];
  if (leftOut.length > 0) {
    header.push(
      '#',
      '# Left out: a name with * or ? would act as a glob and allow more than was seen (globs have',
      '# no escape), so these are not in the rules. Allow them by hand if you trust them:',
    );
    for (const g of leftOut) {
      const seen = [...g.hosts].sort().map(printable).join(', ');
      header.push(`#   ${describe(g)}: ${leftOutReason(g)}; hosts ${seen}; ports ${[...g.ports].sort((a, b) => a - b).join(', ')}`);
    }
  }
  if (badHosts.size > 0) header.push('#', `# Left out: ${badHosts.size} host(s) that are not valid list entries.`);
  return `${header.join('\n')}\n${stringify(policy, { lineWidth: 0 })}`;
}
