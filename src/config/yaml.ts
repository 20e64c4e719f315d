/**
 * Strict YAML reading with positions, shared by the policy and the proxy configuration.
 * Validation runs on the AST (not on `toJS()` output) so that every problem can point at the
 * node that caused it as `FILE:LINE:COL`, and every problem is collected, not only the first.
 */
import { isMap, isScalar, isSeq, LineCounter, parseDocument } from 'yaml';
import type { Document, Node, Pair, YAMLMap } from 'yaml';

export interface Diagnostic {
  readonly file: string;
  readonly line: number;
  readonly col: number;
  readonly severity: 'error' | 'warning';
  readonly message: string;
}

export function formatDiagnostic(d: Diagnostic): string {
  return `${d.file}:${d.line}:${d.col}: ${d.severity}: ${d.message}`;
}

/** Something with a source position: a node, a pair (its key), or a raw offset. */
export type Located = Node | Pair | number | null | undefined;

/** A value left empty in the source (`key:`), which has no position of its own worth showing. */
function isEmpty(node: Node | null | undefined): boolean {
  return node === null || node === undefined || (isScalar(node) && node.value === null && !node.source);
}

export class YamlSource {
  readonly doc: Document.Parsed;
  readonly diagnostics: Diagnostic[] = [];
  private readonly lines = new LineCounter();

  constructor(
    readonly file: string,
    text: string,
  ) {
    this.doc = parseDocument(text, { lineCounter: this.lines, uniqueKeys: true, prettyErrors: false });
    for (const e of this.doc.errors) {
      const { line, col } = this.lines.linePos(e.pos[0]);
      this.diagnostics.push({ file, line, col, severity: 'error', message: e.message.split('\n')[0] as string });
    }
  }

  /** The diagnostics in file order. */
  sorted(): Diagnostic[] {
    return [...this.diagnostics].sort((a, b) => a.line - b.line || a.col - b.col);
  }

  get ok(): boolean {
    return !this.diagnostics.some((d) => d.severity === 'error');
  }

  private offset(at: Located): number {
    if (typeof at === 'number') return at;
    if (!at) return 0;
    if ('key' in at && !('range' in at)) return this.offset((at.key as Node | null) ?? (at.value as Node | null));
    return (at as Node).range?.[0] ?? 0;
  }

  private report(severity: Diagnostic['severity'], at: Located, message: string): void {
    const { line, col } = this.lines.linePos(this.offset(at));
    this.diagnostics.push({ file: this.file, line, col, severity, message });
  }

  error(at: Located, message: string): void {
    this.report('error', at, message);
  }

  warning(at: Located, message: string): void {
    this.report('warning', at, message);
  }

  /**
   * The pairs of a mapping by key, reporting a non-mapping and every unknown key. Returns null
   * when `node` is not a mapping.
   */
  mapping(node: Node | null | undefined, what: string, known: readonly string[], at: Located = node): Map<string, Pair<Node, Node | null>> | null {
    if (!isMap(node)) {
      this.error(isEmpty(node) ? at : node, `${what} must be a mapping`);
      return null;
    }
    const pairs = new Map<string, Pair<Node, Node | null>>();
    for (const pair of (node as YAMLMap<Node, Node | null>).items) {
      const key = isScalar(pair.key) ? pair.key.value : undefined;
      if (typeof key !== 'string') {
        this.error(pair.key, `${what}: keys must be strings`);
      } else if (!known.includes(key)) {
        this.error(pair.key, `${what}: unknown key '${key}' (expected one of: ${known.join(', ')})`);
      } else {
        pairs.set(key, pair);
      }
    }
    return pairs;
  }

  /** A scalar's value, or undefined after reporting a non-scalar. */
  private scalar(pair: Pair<Node, Node | null>, name: string): unknown {
    const value = pair.value;
    if (value === null || value === undefined) return null;
    if (!isScalar(value)) {
      this.error(value, `${name} must be a single value, not a ${isSeq(value) ? 'list' : 'mapping'}`);
      return undefined;
    }
    return value.value;
  }

  /** The node to point at for a pair's value (the key when the value is empty). */
  at(pair: Pair<Node, Node | null>): Located {
    return isEmpty(pair.value) ? pair : pair.value;
  }

  string(pair: Pair<Node, Node | null>, name: string): string | undefined {
    const v = this.scalar(pair, name);
    if (typeof v === 'string') return v;
    if (v !== undefined) this.error(this.at(pair), `${name} must be a string`);
    return undefined;
  }

  boolean(pair: Pair<Node, Node | null>, name: string): boolean | undefined {
    const v = this.scalar(pair, name);
    if (typeof v === 'boolean') return v;
    if (v !== undefined) this.error(this.at(pair), `${name} must be true or false`);
    return undefined;
  }

  integer(pair: Pair<Node, Node | null>, name: string, min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER): number | undefined {
    const v = this.scalar(pair, name);
    if (typeof v === 'number' && Number.isSafeInteger(v) && v >= min && v <= max) return v;
    if (v !== undefined) {
      const range = min === Number.MIN_SAFE_INTEGER ? '' : ` from ${min} to ${max}`;
      this.error(this.at(pair), `${name} must be an integer${range}`);
    }
    return undefined;
  }

  oneOf<T extends string>(pair: Pair<Node, Node | null>, name: string, allowed: readonly T[]): T | undefined {
    const v = this.scalar(pair, name);
    if (typeof v === 'string' && (allowed as readonly string[]).includes(v)) return v as T;
    if (v !== undefined) this.error(this.at(pair), `${name} must be one of: ${allowed.join(', ')}`);
    return undefined;
  }

  /** The items of a sequence value, or undefined after reporting anything else. */
  sequence(pair: Pair<Node, Node | null>, name: string): Node[] | undefined {
    if (!isSeq(pair.value)) {
      this.error(this.at(pair), `${name} must be a list`);
      return undefined;
    }
    return pair.value.items as Node[];
  }

  /** A sequence of strings; each bad item is reported at its own position. */
  strings(pair: Pair<Node, Node | null>, name: string): Array<{ value: string; node: Node }> | undefined {
    const items = this.sequence(pair, name);
    if (!items) return undefined;
    const out: Array<{ value: string; node: Node }> = [];
    for (const item of items) {
      if (isScalar(item) && typeof item.value === 'string') out.push({ value: item.value, node: item });
      else this.error(item ?? this.at(pair), `${name}: each item must be a string`);
    }
    return out;
  }
}
