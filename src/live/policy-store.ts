/**
 * The serving policy. A load reads, validates and compiles off to the side, then swaps one
 * immutable generation in; a decision takes `current` once and uses that generation throughout,
 * and an open tunnel keeps the decision it was made under. A broken file changes nothing: the
 * last good policy keeps serving and the error is kept until a good file loads.
 */
import { sha256Hex } from '../config/secret-hash.js';
import type { Diagnostic } from '../config/yaml.js';
import { formatDiagnostic } from '../config/yaml.js';
import { compilePolicy } from '../policy/compile.js';
import type { CompiledPolicy } from '../policy/compile.js';
import { loadPolicyFile } from '../policy/schema.js';

export interface PolicyGeneration {
  readonly generation: number;
  readonly policy: CompiledPolicy;
  readonly loadedAt: string;
  readonly sha256: string;
  /** The first 12 hex digits of `sha256`: `policy_digest` in every decision event. */
  readonly digest: string;
  readonly source: string;
  readonly egressRules: number;
  readonly skippedRules: number;
  readonly warnings: readonly string[];
}

export interface LoadError {
  readonly at: string;
  readonly errors: readonly string[];
}

export type LoadResult =
  | { readonly ok: true; readonly generation: PolicyGeneration; readonly changed: boolean }
  | { readonly ok: false; readonly error: LoadError };

export class PolicyStore {
  private serving: PolicyGeneration | null = null;
  private failure: LoadError | null = null;
  private counter = 0;
  private loading: Promise<LoadResult> | null = null;
  private again = false;

  constructor(readonly source: string) {}

  /** The serving generation. Throws before the first successful load. */
  get current(): PolicyGeneration {
    if (!this.serving) throw new Error('no policy loaded');
    return this.serving;
  }

  get loaded(): boolean {
    return this.serving !== null;
  }

  /** The last rejected load since the last good one, or null. */
  get lastError(): LoadError | null {
    return this.failure;
  }

  /**
   * Loads the file. Concurrent calls share one load, and a call made during a load causes one
   * more load after it, so the newest bytes always win.
   */
  load(): Promise<LoadResult> {
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = (async () => {
      let result: LoadResult;
      do {
        this.again = false;
        result = await this.loadOnce();
      } while (this.again);
      this.loading = null;
      return result;
    })();
    return this.loading;
  }

  private async loadOnce(): Promise<LoadResult> {
    const loaded = await loadPolicyFile(this.source);
    const errors = loaded.diagnostics.filter((d: Diagnostic) => d.severity === 'error').map(formatDiagnostic);
    if (!loaded.spec || !loaded.bytes) {
      this.failure = { at: new Date().toISOString(), errors };
      return { ok: false, error: this.failure };
    }
    const sha256 = sha256Hex(loaded.bytes);
    this.failure = null;
    if (this.serving && this.serving.sha256 === sha256) return { ok: true, generation: this.serving, changed: false };
    const generation: PolicyGeneration = Object.freeze({
      generation: ++this.counter,
      policy: compilePolicy(loaded.spec),
      loadedAt: new Date().toISOString(),
      sha256,
      digest: sha256.slice(0, 12),
      source: this.source,
      egressRules: loaded.egressRules,
      skippedRules: loaded.skippedRules,
      warnings: loaded.diagnostics.filter((d) => d.severity === 'warning').map(formatDiagnostic),
    });
    this.serving = generation;
    return { ok: true, generation, changed: true };
  }
}
