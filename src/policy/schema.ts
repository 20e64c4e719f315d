/**
 * Policy file validation (policy.md "File shape" and "Validation"). Strict: unknown keys, wrong
 * types, duplicate ids, bad entries and empty lists are errors, each at the node that caused it;
 * the later node of a two-node problem. Every problem is reported, not only the first. Rules
 * the egress surface does not enforce are kept in the spec and counted, with a warning for an
 * egress rule whose verdict is skipped.
 *
 * Over 300 lines: it is the whole policy language's validation, one checker per key of
 * policy.md, kept together so every error of a file is reported at once with its position.
 */
import { readFile } from 'node:fs/promises';
import type { Node, Pair } from 'yaml';
import { isScalar } from 'yaml';
import { YamlSource } from '../config/yaml.js';
import type { Diagnostic } from '../config/yaml.js';
import { entryWarning, parseEntry } from './entries.js';
import { isEnforcedEgressRule, RULE_VERDICTS, STAGES } from './types.js';
import type { AfterSpec, EgressLists, Entry, PolicySpec, RuleSpec, RuleVerdict, Stage } from './types.js';

export const TOP_KEYS = ['version', 'default_verdict', 'shadow_mode', 'observe_mode', 'rules'] as const;
export const RULE_KEYS = [
  'id',
  'priority',
  'label',
  'stage',
  'tool_name_glob',
  'server_glob',
  'verdict',
  'egress',
  'egress_json',
  'ports',
  'after',
] as const;
const AFTER_KEYS = ['tool_name_glob', 'server_glob', 'hosts', 'within_seconds'] as const;
/** The longest sequence window: a day (policy.md). */
export const MAX_WITHIN_SECONDS = 86_400;
/** Rule ids travel in the `x-egress-rule` response header: visible ASCII only. */
const RULE_ID = /^[\x21-\x7e]{1,200}$/;

export interface PolicyLoadResult {
  readonly spec: PolicySpec | null;
  readonly diagnostics: readonly Diagnostic[];
  /** Rules the proxy evaluates, and rules it skips (other stages, non-enforced verdicts). */
  readonly egressRules: number;
  readonly skippedRules: number;
}

export async function loadPolicyFile(file: string): Promise<PolicyLoadResult & { readonly bytes: Buffer | null }> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (err) {
    return unloadable(file, null, `cannot read policy file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    return { ...parsePolicy(file, bytes.toString('utf8')), bytes };
  } catch (err) {
    // Bytes that cannot even be parsed (a string too long for V8, say): rejected with what was read.
    return unloadable(file, bytes, `cannot parse policy file: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** A file that gave no policy at all: one error at its start, and the bytes if any were read. */
function unloadable(file: string, bytes: Buffer | null, message: string): PolicyLoadResult & { readonly bytes: Buffer | null } {
  return { spec: null, bytes, egressRules: 0, skippedRules: 0, diagnostics: [{ file, line: 1, col: 1, severity: 'error', message }] };
}

export function parsePolicy(file: string, text: string): PolicyLoadResult {
  const src = new YamlSource(file, text);
  if (!src.ok) return { spec: null, diagnostics: src.sorted(), egressRules: 0, skippedRules: 0 };
  const root = src.doc.contents as Node | null;
  if (root === null || (isScalar(root) && root.value === null)) {
    src.error(0, 'empty policy file: version is required');
    return { spec: null, diagnostics: src.sorted(), egressRules: 0, skippedRules: 0 };
  }
  const top = src.mapping(root, 'policy', TOP_KEYS);
  if (!top) return { spec: null, diagnostics: src.sorted(), egressRules: 0, skippedRules: 0 };

  const version = top.get('version');
  if (!version) src.error(root, 'version is required (version: 1)');
  else {
    const v = src.integer(version, 'version');
    if (v !== undefined && v !== 1) src.error(src.at(version), 'version must be 1 (the only version)');
  }
  const defaultPair = top.get('default_verdict');
  const defaultVerdict = defaultPair ? src.oneOf(defaultPair, 'default_verdict', ['allow', 'deny'] as const) : 'deny';
  const shadowPair = top.get('shadow_mode');
  const shadowMode = shadowPair ? src.boolean(shadowPair, 'shadow_mode') : false;
  const observePair = top.get('observe_mode');
  const observeMode = observePair ? src.boolean(observePair, 'observe_mode') : false;

  const rules: RuleSpec[] = [];
  const rulesPair = top.get('rules');
  if (rulesPair && rulesPair.value !== null && !(isScalar(rulesPair.value) && rulesPair.value.value === null)) {
    const items = src.sequence(rulesPair, 'rules');
    const seenIds = new Map<string, number>();
    items?.forEach((item, index) => {
      const rule = readRule(src, item, index + 1, seenIds);
      if (rule) rules.push(rule);
    });
  }

  let egressRules = 0;
  let skippedRules = 0;
  for (const rule of rules) {
    if (isEnforcedEgressRule(rule)) egressRules++;
    else skippedRules++;
  }
  if (!src.ok || defaultVerdict === undefined || shadowMode === undefined || observeMode === undefined) {
    return { spec: null, diagnostics: src.sorted(), egressRules, skippedRules };
  }
  return { spec: { defaultVerdict, shadowMode, observeMode, rules }, diagnostics: src.sorted(), egressRules, skippedRules };
}

function readRule(src: YamlSource, node: Node, position: number, seenIds: Map<string, number>): RuleSpec | null {
  const what = `rule ${position}`; // 1-based, like the `rule-<position>` default id
  const pairs = src.mapping(node, `rule ${position}`, RULE_KEYS);
  if (!pairs) return null;
  const before = src.diagnostics.length;

  let id = `rule-${position}`;
  const idPair = pairs.get('id');
  if (idPair) {
    const v = src.string(idPair, 'id');
    if (v !== undefined && !RULE_ID.test(v)) src.error(src.at(idPair), 'id must be 1 to 200 visible ASCII characters (no spaces)');
    else if (v !== undefined) id = v;
  }
  const previous = seenIds.get(id);
  if (previous !== undefined) src.error(idPair ? src.at(idPair) : node, `duplicate rule id '${id}' (also rule ${previous})`);
  else seenIds.set(id, position);

  const priorityPair = pairs.get('priority');
  const priority = priorityPair ? src.integer(priorityPair, 'priority') : undefined;
  if (!priorityPair) src.error(node, `${what}: priority is required`);

  const labelPair = pairs.get('label');
  const label = labelPair ? src.string(labelPair, 'label') : null;
  const stagePair = pairs.get('stage');
  const stage: Stage | undefined = stagePair ? src.oneOf(stagePair, 'stage', STAGES) : 'egress';
  const toolPair = pairs.get('tool_name_glob');
  const toolGlob = toolPair ? src.string(toolPair, 'tool_name_glob') : '*';
  const serverPair = pairs.get('server_glob');
  const serverGlob = serverPair ? src.string(serverPair, 'server_glob') : '*';
  const verdictPair = pairs.get('verdict');
  const verdict = verdictPair ? src.oneOf(verdictPair, 'verdict', RULE_VERDICTS) : undefined;
  if (!verdictPair) src.error(node, `${what}: verdict is required`);

  const lists = readLists(src, pairs);
  const ports = readPorts(src, pairs.get('ports'));
  const afterPair = pairs.get('after');
  const after = afterPair ? readAfter(src, afterPair) : null;

  if (verdict && stage === 'egress' && !isEnforcedEgressRule({ stage, verdict })) {
    src.warning(
      src.at(verdictPair as Pair<Node, Node | null>),
      `rule '${id}': ${verdict} is not enforced on the egress surface; the rule is skipped`,
    );
  }
  if (src.diagnostics.slice(before).some((d) => d.severity === 'error')) return null;
  return {
    position,
    id,
    label: label ?? null,
    priority: priority as number,
    stage: stage as Stage,
    toolGlob: toolGlob as string,
    serverGlob: serverGlob as string,
    verdict: verdict as RuleVerdict,
    lists: lists ?? null,
    ports: ports ?? null,
    after: after ?? null,
  };
}

/** A sequence clause (policy.md "Sequence clauses"); undefined after an error. */
function readAfter(src: YamlSource, pair: Pair<Node, Node | null>): AfterSpec | undefined {
  const keys = src.mapping(pair.value, 'after', AFTER_KEYS, pair);
  if (!keys) return undefined;
  const before = src.diagnostics.length;
  const toolPair = keys.get('tool_name_glob');
  const toolGlob = toolPair ? src.string(toolPair, 'after.tool_name_glob') : '*';
  const serverPair = keys.get('server_glob');
  const serverGlob = serverPair ? src.string(serverPair, 'after.server_glob') : '*';
  const withinPair = keys.get('within_seconds');
  const withinSeconds = withinPair ? src.integer(withinPair, 'after.within_seconds', 1, MAX_WITHIN_SECONDS) : undefined;
  if (!withinPair) src.error(pair.value, `after.within_seconds is required (an integer from 1 to ${MAX_WITHIN_SECONDS})`);
  const hostsPair = keys.get('hosts');
  let hosts: Entry[] | null = null;
  if (hostsPair) {
    const items = src.strings(hostsPair, 'after.hosts');
    if (items && items.length === 0)
      src.error(src.at(hostsPair), 'after.hosts must list at least one entry (omit hosts to accept any earlier call)');
    hosts = [];
    for (const item of items ?? []) {
      const entry = parseEntry(item.value);
      if ('error' in entry) src.error(item.node, `after.hosts: ${entry.error}`);
      else {
        const warning = entryWarning(entry);
        if (warning) src.warning(item.node, `after.hosts: ${warning}`);
        hosts.push(entry);
      }
    }
  }
  if (src.diagnostics.slice(before).some((d) => d.severity === 'error')) return undefined;
  return { toolGlob: toolGlob as string, serverGlob: serverGlob as string, hosts, withinSeconds: withinSeconds as number };
}

/** The rule's lists; null for no list at all; undefined after an error. */
function readLists(src: YamlSource, pairs: Map<string, Pair<Node, Node | null>>): EgressLists | null | undefined {
  const yamlPair = pairs.get('egress');
  const jsonPair = pairs.get('egress_json');
  if (yamlPair && jsonPair) {
    // Point at whichever of the two comes later in the file.
    const later = (yamlPair.key.range?.[0] ?? 0) > (jsonPair.key.range?.[0] ?? 0) ? yamlPair : jsonPair;
    src.error(later.key, 'a rule has either egress or egress_json, not both');
    return undefined;
  }
  if (yamlPair) return readYamlLists(src, yamlPair);
  if (jsonPair) return readJsonLists(src, jsonPair);
  return null;
}

function readYamlLists(src: YamlSource, pair: Pair<Node, Node | null>): EgressLists | undefined {
  const lists = src.mapping(pair.value, 'egress', ['allow', 'deny'], pair);
  if (!lists) return undefined;
  const out: { allow: Entry[]; deny: Entry[] } = { allow: [], deny: [] };
  let ok = true;
  for (const side of ['allow', 'deny'] as const) {
    const sidePair = lists.get(side);
    if (!sidePair) continue;
    const items = src.strings(sidePair, `egress.${side}`);
    if (!items) {
      ok = false;
      continue;
    }
    for (const item of items) {
      const entry = parseEntry(item.value);
      if ('error' in entry) {
        src.error(item.node, entry.error);
        ok = false;
      } else {
        const warning = entryWarning(entry);
        if (warning) src.warning(item.node, warning);
        out[side].push(entry);
      }
    }
  }
  if (ok && out.allow.length === 0 && out.deny.length === 0) {
    src.error(src.at(pair), 'egress declares no entry: list at least one allow or deny entry, or remove egress');
    return undefined;
  }
  return ok ? out : undefined;
}

function readJsonLists(src: YamlSource, pair: Pair<Node, Node | null>): EgressLists | null | undefined {
  const text = src.string(pair, 'egress_json');
  if (text === undefined) return undefined;
  if (text === '') return null;
  const at = src.at(pair);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    src.error(at, `egress_json is not valid JSON: ${(err as Error).message}`);
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    src.error(at, 'egress_json must be a JSON object {"allow"?: [...], "deny"?: [...]}');
    return undefined;
  }
  const out: { allow: Entry[]; deny: Entry[] } = { allow: [], deny: [] };
  let ok = true;
  for (const [key, value] of Object.entries(parsed)) {
    if (key !== 'allow' && key !== 'deny') {
      src.error(at, `egress_json: unknown key '${key}' (expected allow, deny)`);
      ok = false;
      continue;
    }
    if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
      src.error(at, `egress_json: ${key} must be an array of strings`);
      ok = false;
      continue;
    }
    for (const text of value) {
      const entry = parseEntry(text);
      if ('error' in entry) {
        src.error(at, `egress_json.${key}: ${entry.error}`);
        ok = false;
      } else {
        const warning = entryWarning(entry);
        if (warning) src.warning(at, `egress_json.${key}: ${warning}`);
        out[key].push(entry);
      }
    }
  }
  if (ok && out.allow.length === 0 && out.deny.length === 0) {
    src.error(at, 'egress_json declares no entry: list at least one allow or deny entry, or use ""');
    return undefined;
  }
  return ok ? out : undefined;
}

function readPorts(src: YamlSource, pair: Pair<Node, Node | null> | undefined): number[] | null | undefined {
  if (!pair) return null;
  const items = src.sequence(pair, 'ports');
  if (!items) return undefined;
  if (items.length === 0) {
    src.error(src.at(pair), 'ports must list at least one port (omit ports for every port)');
    return undefined;
  }
  const ports: number[] = [];
  let ok = true;
  for (const item of items) {
    const v = isScalar(item) ? item.value : undefined;
    if (typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65535) ports.push(v);
    else {
      src.error(item, 'ports: each port must be an integer from 1 to 65535');
      ok = false;
    }
  }
  return ok ? ports : undefined;
}
