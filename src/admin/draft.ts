/**
 * Observe mode's output turned into a draft allow-list policy: one allow rule per (server, tool)
 * listing the hosts and ports seen, then a catch-all deny. Calls with no tool get a `*` rule,
 * placed last among the allows (only `*` matches unattributed traffic). The draft passes
 * `check`; an operator reviews it, rolls it out in shadow mode, then enforces it.
 */
import { stringify } from 'yaml';
import type { DiscoveredDestination } from '../proxy/discovered.js';

export function draftPolicy(destinations: readonly DiscoveredDestination[], now = new Date()): string {
  const groups = new Map<string, { server: string; tool: string | null; hosts: Set<string>; ports: Set<number>; count: number }>();
  for (const d of destinations) {
    const key = `${d.server}\u0000${d.tool ?? '\u0001'}`;
    const group = groups.get(key) ?? { server: d.server, tool: d.tool, hosts: new Set(), ports: new Set(), count: 0 };
    group.hosts.add(d.host);
    group.ports.add(d.port);
    group.count += d.count;
    groups.set(key, group);
  }
  const ordered = [...groups.values()].sort((a, b) => Number(a.tool === null) - Number(b.tool === null) || a.server.localeCompare(b.server) || (a.tool ?? '').localeCompare(b.tool ?? ''));
  const rules = ordered.map((g, i) => ({
    id: `discovered-${i + 1}`,
    priority: 100 + i * 10,
    label: `Seen from ${g.server}, ${g.tool === null ? 'unattributed calls' : `tool ${g.tool}`} (${g.count} calls)`,
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
    '# shadow_mode: false to enforce. Tool names containing * or ? act as globs here.',
  ].join('\n');
  return `${header}\n${stringify(policy, { lineWidth: 0 })}`;
}
