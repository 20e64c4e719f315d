/**
 * Edits to the policy file's text (the admin API's rule routes and `PATCH /v1/policy`), pure:
 * text in, text out, no I/O and no validation (the caller validates the result like a reload).
 *
 * The operator's file is theirs: comments, key order, quoting and the other rules' text must
 * survive an edit byte for byte. A re-dump of the whole document would normalise all of it, so
 * an edit changes the yaml Document only to render the one node it touches, and splices that
 * rendering into the original text over that node's source range. Everything outside the range
 * is the original bytes. Inside an edited rule, keys whose value did not change keep their nodes
 * (and so their comments and flow style), though the rule's lines are rendered again.
 *
 * Layouts the splice does not handle (a flow-style `rules: [...]` list or a flow top-level
 * mapping) fall back to rendering the whole edited Document, which keeps comments and key
 * order but not every space.
 *
 * Over 300 lines: five edits (add, replace, delete a rule; replace the file; change settings),
 * each splicing text byte for byte, are one idea and share their span arithmetic.
 */
import { Document, isMap, isScalar, isSeq, parseDocument, visit } from 'yaml';
import type { Node, Pair, YAMLMap, YAMLSeq } from 'yaml';
import { RULE_KEYS, TOP_KEYS } from '../policy/schema.js';

/** The keys of a rule and of the file, in the order the policy language documents them (new keys go in this order). */
const RULE_KEY_ORDER: readonly string[] = RULE_KEYS;
const TOP_KEY_ORDER: readonly string[] = TOP_KEYS;
const RENDER = { lineWidth: 0, flowCollectionPadding: false, indent: 2 } as const;

export type PolicySettings = { readonly default_verdict?: string; readonly shadow_mode?: boolean; readonly observe_mode?: boolean };

export type PolicyEdit =
  | { readonly kind: 'add_rule'; readonly rule: Readonly<Record<string, unknown>> }
  | { readonly kind: 'replace_rule'; readonly id: string; readonly rule: Readonly<Record<string, unknown>> }
  | { readonly kind: 'delete_rule'; readonly id: string }
  | { readonly kind: 'settings'; readonly settings: PolicySettings };

export type EditResult =
  | { readonly ok: true; readonly text: string }
  /** `not_found`: no rule with that id; `unparsable`: the current file is not YAML an edit can work on. */
  | { readonly ok: false; readonly code: 'not_found' | 'unparsable'; readonly message: string };

/** Applies `edit` to the policy text. The result is not validated. */
export function applyPolicyEdit(text: string, edit: PolicyEdit): EditResult {
  const doc = parseDocument(text, { uniqueKeys: false });
  if (doc.errors.length > 0)
    return {
      ok: false,
      code: 'unparsable',
      message: `the policy file is not valid YAML (${(doc.errors[0] as Error).message.split('\n')[0]}); replace it with PUT /v1/policy`,
    };
  const top = doc.contents;
  if (!isMap(top)) return { ok: false, code: 'unparsable', message: 'the policy file is not a mapping; replace it with PUT /v1/policy' };
  const eol = text.includes('\r\n') ? '\r\n' : '\n';
  const out = edit.kind === 'settings' ? editSettings(doc, top, text, edit.settings) : editRules(doc, top, text, edit);
  if (!out.ok) return out;
  return { ok: true, text: eol === '\n' ? out.text : out.text.replace(/\r?\n/g, '\r\n') };
}

/** The effective id of each rule item: its `id`, else `rule-<position>` as the schema defaults it. */
export function ruleIndex(seq: YAMLSeq, id: string): number {
  return seq.items.findIndex((item, i) => effectiveId(item as Node, i) === id);
}

function effectiveId(item: Node, index: number): string {
  if (isMap(item)) {
    const v = item.get('id', true);
    // A non-string id is invalid and the schema falls back to the default id: so does this.
    if (isScalar(v) && typeof v.value === 'string') return v.value;
  }
  return `rule-${index + 1}`;
}

function lineStart(text: string, offset: number): number {
  return text.lastIndexOf('\n', offset - 1) + 1;
}

/** The end of a node's source as whole lines: past its last newline, not into the next line's indentation. */
function lineEnd(text: string, end: number): number {
  const nl = text.lastIndexOf('\n', end - 1);
  if (nl === -1) return end;
  return text.slice(nl + 1, end).trim() === '' ? nl + 1 : end;
}

function render(node: Node): string {
  const d = new Document();
  d.contents = node;
  return d.toString(RENDER);
}

/** Rendered block text moved to `column`: the first line stays where the node started, later lines are indented. */
function indentBlock(rendered: string, column: number): string {
  const pad = ' '.repeat(column);
  return rendered.replace(/\n(?=[^\n])/g, `\n${pad}`);
}

/** A JSON value as a yaml node: lists of plain values in flow style (`[a, b]`), as the policy files are written. */
function nodeOf(doc: Document, value: unknown): Node {
  const node = doc.createNode(value) as Node;
  visit(node, {
    Seq(_key, seq) {
      if (seq.items.every((i) => isScalar(i))) seq.flow = true;
    },
  });
  return node;
}

function sameValue(node: unknown, value: unknown): boolean {
  const current: unknown = node && typeof (node as Node).toJSON === 'function' ? (node as Node).toJSON() : node;
  return JSON.stringify(current) === JSON.stringify(value);
}

/** Inserts `pair` among `map`'s pairs before the first existing key that comes after it in `order`. */
function insertOrdered(map: YAMLMap, pair: Pair, order: readonly string[]): void {
  const rank = (k: unknown) => {
    const i = order.indexOf(String(isScalar(k) ? k.value : k));
    return i === -1 ? order.length : i;
  };
  const mine = rank(pair.key);
  const at = map.items.findIndex((p) => rank(p.key) > mine);
  if (at === -1) map.items.push(pair);
  else map.items.splice(at, 0, pair);
}

/**
 * Makes `map` say `value` (a JSON object), keeping the node of every key whose value is
 * unchanged (its comments and style), editing nested mappings the same way, and putting new
 * keys in the documented order.
 */
function reconcileMap(doc: Document, map: YAMLMap, value: Readonly<Record<string, unknown>>, order: readonly string[]): void {
  for (const pair of [...map.items]) {
    const key = String(isScalar(pair.key) ? pair.key.value : pair.key);
    if (!Object.prototype.hasOwnProperty.call(value, key)) map.items.splice(map.items.indexOf(pair), 1);
  }
  for (const [key, v] of Object.entries(value)) {
    const pair = map.items.find((p) => String(isScalar(p.key) ? p.key.value : p.key) === key);
    if (!pair) {
      insertOrdered(map, doc.createPair(key, null), order);
      const added = map.items.find((p) => String(isScalar(p.key) ? p.key.value : p.key) === key) as Pair;
      added.value = nodeOf(doc, v);
      continue;
    }
    if (sameValue(pair.value, v)) continue;
    const old = pair.value as Node | null;
    if (isMap(old) && v !== null && typeof v === 'object' && !Array.isArray(v)) {
      reconcileMap(doc, old, v as Record<string, unknown>, []);
      continue;
    }
    const fresh = nodeOf(doc, v);
    // The operator's comment on that line stays (it may well explain the new value too).
    if (old && old.comment) fresh.comment = old.comment;
    if (isSeq(old) && isSeq(fresh)) fresh.flow = old.flow ?? fresh.flow;
    pair.value = fresh;
  }
}

/** A rule object in the documented key order (unknown keys last; validation names them). */
function orderedRule(rule: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const keys = Object.keys(rule).sort((a, b) => {
    const ra = RULE_KEY_ORDER.indexOf(a);
    const rb = RULE_KEY_ORDER.indexOf(b);
    return (ra === -1 ? RULE_KEY_ORDER.length : ra) - (rb === -1 ? RULE_KEY_ORDER.length : rb);
  });
  const out: Record<string, unknown> = {};
  for (const k of keys) out[k] = rule[k];
  return out;
}

type TextResult = { ok: true; text: string } | { ok: false; code: 'not_found' | 'unparsable'; message: string };

function editRules(doc: Document, top: YAMLMap, text: string, edit: Exclude<PolicyEdit, { kind: 'settings' }>): TextResult {
  const rulesPair = top.items.find((p) => isScalar(p.key) && p.key.value === 'rules');
  const seq = rulesPair?.value;
  const empty = !seq || (isScalar(seq) && (seq.value === null || seq.value === undefined)) || (isSeq(seq) && seq.items.length === 0);
  if (edit.kind !== 'add_rule' && (empty || !isSeq(seq))) return { ok: false, code: 'not_found', message: `no rule with id '${edit.id}'` };

  if (edit.kind === 'add_rule') {
    const node = nodeOf(doc, orderedRule(edit.rule));
    if (empty) return addFirstRule(doc, top, text, rulesPair, node);
    if (!isSeq(seq) || seq.flow) return wholeDocument(doc, () => (seq as YAMLSeq).items.push(node));
    const last = seq.items[seq.items.length - 1] as Node;
    const lastRange = last.range as [number, number, number];
    const dashColumn = dashColumnOf(text, lastRange[0]);
    let at = lineEnd(text, lastRange[2]);
    let prefix = '';
    if (at === text.length && !text.endsWith('\n')) prefix = '\n';
    // Rules separated by blank lines get a blank line before the new one too.
    if (seq.items.length > 1 && last.spaceBefore) prefix += '\n';
    const rendered = `${' '.repeat(dashColumn)}- ${indentBlock(render(node), dashColumn + 2)}`;
    at = Math.min(at, text.length);
    return { ok: true, text: text.slice(0, at) + prefix + rendered + text.slice(at) };
  }

  const rules = seq as YAMLSeq;
  const index = ruleIndex(rules, edit.id);
  if (index === -1) return { ok: false, code: 'not_found', message: `no rule with id '${edit.id}'` };
  const item = rules.items[index] as Node;
  if (edit.kind === 'replace_rule' && !Object.prototype.hasOwnProperty.call(edit.rule, 'id') && isMap(item) && item.has('id')) {
    // A body without an id replaces the rule's content; the rule keeps the id it has in the file.
    edit = { ...edit, rule: { id: edit.id, ...edit.rule } };
  }
  if (rules.flow) {
    return wholeDocument(doc, () => {
      if (edit.kind === 'delete_rule') rules.items.splice(index, 1);
      else rules.items[index] = replacement(doc, item, edit.rule);
    });
  }
  const range = item.range as [number, number, number];
  if (edit.kind === 'delete_rule') {
    // The rule's lines, from its `- ` through its end, and the comment lines right above it
    // (at its own indentation, no blank line between): they describe it.
    const dash = lineStart(text, range[0]);
    const dashColumn = dashColumnOf(text, range[0]);
    let from = dash;
    for (;;) {
      const prev = lineStart(text, from - 1);
      if (from === 0) break;
      const line = text.slice(prev, from - 1).replace(/\r$/, '');
      const m = /^( *)#/.exec(line);
      if (!m || (m[1] as string).length !== dashColumn) break;
      from = prev;
    }
    let to = lineEnd(text, range[2]);
    // The last rule of a file without a final newline: take the newline before it instead.
    if (to === text.length && !text.endsWith('\n') && from > 0) from -= 1;
    to = Math.max(to, from);
    // The blank line that set the rule off from the next one goes with it (for the last rule,
    // the one before it): no double blank line, no blank line right under `rules:`.
    const blankAfter = /^\r?\n/.exec(text.slice(to));
    if (blankAfter && index < rules.items.length - 1) to += blankAfter[0].length;
    else if (index === rules.items.length - 1 && /\n\r?\n$/.test(text.slice(0, from))) from = text.lastIndexOf('\n', from - 2) + 1;
    else if (blankAfter) to += blankAfter[0].length;
    return { ok: true, text: text.slice(0, from) + text.slice(to) };
  }
  const node = replacement(doc, item, edit.rule);
  const start = range[0];
  const end = lineEnd(text, range[2]);
  let rendered = indentBlock(render(node), start - lineStart(text, start));
  if (!text.slice(start, end).endsWith('\n')) rendered = rendered.replace(/\n$/, '');
  return { ok: true, text: text.slice(0, start) + rendered + text.slice(end) };
}

/** The replaced rule: the old mapping edited in place when it is one, so unchanged keys keep their comments. */
function replacement(doc: Document, item: Node, rule: Readonly<Record<string, unknown>>): Node {
  if (!isMap(item) || item.flow) return nodeOf(doc, orderedRule(rule));
  // Comments before the rule lie outside its range and stay in the text; not rendered twice.
  item.commentBefore = undefined;
  reconcileMap(doc, item, rule, RULE_KEY_ORDER);
  return item;
}

function dashColumnOf(text: string, itemStart: number): number {
  const start = lineStart(text, itemStart);
  const dash = text.indexOf('-', start);
  return dash === -1 || dash > itemStart ? itemStart - start : dash - start;
}

/** The first rule of a file with no (or an empty) `rules`: a block list under the key. */
function addFirstRule(doc: Document, top: YAMLMap, text: string, rulesPair: Pair | undefined, node: Node): TextResult {
  if (top.flow) return wholeDocument(doc, () => top.set('rules', doc.createNode([node])));
  const block = `  - ${indentBlock(render(node), 4)}`;
  if (!rulesPair) {
    const sep = text === '' || text.endsWith('\n') ? '' : '\n';
    return { ok: true, text: `${text}${sep}rules:\n${block}` };
  }
  const key = rulesPair.key as Node;
  const keyEnd = (key.range as [number, number, number])[1];
  const colon = text.indexOf(':', keyEnd);
  const value = rulesPair.value as Node | null;
  // `rules:` or `rules: []`: the empty value (and nothing else on that line but a comment) is replaced.
  const valueEnd = value && value.range ? value.range[1] : colon + 1;
  const lineEndAt = text.indexOf('\n', valueEnd);
  const rest = text.slice(valueEnd, lineEndAt === -1 ? text.length : lineEndAt);
  const comment = rest.trim().startsWith('#') ? ` ${rest.trim()}` : '';
  const after = lineEndAt === -1 ? '' : text.slice(lineEndAt + 1);
  return { ok: true, text: `${text.slice(0, colon + 1)}${comment}\n${block}${after}` };
}

function editSettings(doc: Document, top: YAMLMap, text: string, settings: PolicySettings): TextResult {
  if (top.flow) {
    return wholeDocument(doc, () => {
      for (const [k, v] of Object.entries(settings)) if (v !== undefined) top.set(k, v);
    });
  }
  // Edits from the end of the text backwards, so earlier offsets stay valid.
  const edits: Array<{ at: number; to: number; text: string }> = [];
  const entries = Object.entries(settings).sort(([a], [b]) => TOP_KEY_ORDER.indexOf(a) - TOP_KEY_ORDER.indexOf(b));
  for (const [key, v] of entries) {
    if (v === undefined) continue;
    const scalar = render(doc.createNode(v) as Node).replace(/\n$/, '');
    const pair = top.items.find((p) => isScalar(p.key) && p.key.value === key);
    const value = pair?.value as Node | null | undefined;
    if (pair && value && value.range && (isScalar(value) ? value.value !== null || !!value.source : true)) {
      edits.push({ at: value.range[0], to: value.range[1], text: scalar });
    } else if (pair) {
      // `key:` with nothing after it: the value goes after the colon.
      const keyEnd = ((pair.key as Node).range as [number, number, number])[1];
      const colon = text.indexOf(':', keyEnd);
      edits.push({ at: colon + 1, to: colon + 1, text: ` ${scalar}` });
    } else {
      // A new key goes on the line after the key that precedes it in the documented order (when
      // that one is a one-line value), else before the first key that follows it, else at the end.
      const mine = TOP_KEY_ORDER.indexOf(key);
      const order = (p: Pair) => (isScalar(p.key) ? TOP_KEY_ORDER.indexOf(String(p.key.value)) : -1);
      const prev = [...top.items].reverse().find((p) => order(p) !== -1 && order(p) < mine);
      const next = top.items.find((p) => order(p) > mine);
      const line = `${key}: ${scalar}\n`;
      const prevValue = prev?.value as Node | null | undefined;
      if (prevValue && isScalar(prevValue) && prevValue.range) {
        const nl = text.indexOf('\n', prevValue.range[1]);
        if (nl === -1) edits.push({ at: text.length, to: text.length, text: `\n${line}` });
        else edits.push({ at: nl + 1, to: nl + 1, text: line });
      } else if (next) {
        const at = lineStart(text, ((next.key as Node).range as [number, number, number])[0]);
        edits.push({ at, to: at, text: line });
      } else {
        const sep = text.endsWith('\n') || text === '' ? '' : '\n';
        edits.push({ at: text.length, to: text.length, text: sep + line });
      }
    }
  }
  // Two new keys at one place: the later one first, so they end up in order.
  const indexed = edits.map((e, i) => ({ ...e, i }));
  indexed.sort((a, b) => b.at - a.at || b.i - a.i);
  let out = text;
  for (const e of indexed) out = out.slice(0, e.at) + e.text + out.slice(e.to);
  return { ok: true, text: out };
}

function wholeDocument(doc: Document, change: () => void): TextResult {
  change();
  return { ok: true, text: doc.toString(RENDER) };
}
