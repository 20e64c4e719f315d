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

/** One read of the file, reported once, whoever asked for it and however many asked. */
export type LoadAttempt = LoadResult & {
  /** Who asked first (`start`, `SIGHUP`, `watch`, `api`, ...). */
  readonly trigger: string;
  /** The SHA-256 of the bytes read, or null when the file could not be read. */
  readonly bytesSha256: string | null;
};

export interface PolicyStoreOptions {
  /** Called once per read of the file, before anyone who asked for it hears the result. */
  readonly report?: (attempt: LoadAttempt) => void;
  /** Reads and parses the file (tests give their own). */
  readonly read?: (file: string) => ReturnType<typeof loadPolicyFile>;
}

/** Those waiting for the next read: the first asker names it. */
interface Askers {
  readonly trigger: string;
  readonly waiters: Array<{ resolve: (result: LoadResult) => void; reject: (err: unknown) => void }>;
}

export class PolicyStore {
  private serving: PolicyGeneration | null = null;
  private failure: LoadError | null = null;
  private counter = 0;
  /** Asked for a load since the running read began: the next read is theirs. */
  private waiting: Askers | null = null;
  private draining = false;
  private readonly report: (attempt: LoadAttempt) => void;
  private readonly read: (file: string) => ReturnType<typeof loadPolicyFile>;

  constructor(
    readonly source: string,
    options: PolicyStoreOptions = {},
  ) {
    this.report = options.report ?? (() => {});
    this.read = options.read ?? loadPolicyFile;
  }

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
   * Loads the file, and resolves with the result of a read that began after this call, so the
   * newest bytes always win. Calls made while a read is running share the next one. Each read
   * is reported once (`options.report`): a generation made by a read is announced even when a
   * later read, asked for meanwhile, finds nothing new.
   */
  load(trigger: string): Promise<LoadResult> {
    const result = new Promise<LoadResult>((resolve, reject) => {
      if (this.waiting) this.waiting.waiters.push({ resolve, reject });
      else this.waiting = { trigger, waiters: [{ resolve, reject }] };
    });
    if (!this.draining) {
      this.draining = true;
      void this.drain();
    }
    return result;
  }

  private async drain(): Promise<void> {
    for (let askers = this.waiting; askers !== null; askers = this.waiting) {
      this.waiting = null;
      const { result, bytesSha256 } = await this.loadOnce().catch((err: unknown) => this.unexpected(err));
      // A report that throws (the event log cannot be written) fails this read's callers, not
      // the store: the next load reads again.
      let reportFailed: { err: unknown } | null = null;
      try {
        this.report({ ...result, trigger: askers.trigger, bytesSha256 });
      } catch (err) {
        reportFailed = { err };
      }
      for (const w of askers.waiters) {
        if (reportFailed) w.reject(reportFailed.err);
        else w.resolve(result);
      }
    }
    this.draining = false;
  }

  /**
   * A read or compile that threw: rejected like a broken file, so the last good policy keeps
   * serving. `bytesSha256` names the bytes when they were read (a compile that threw), so the
   * watcher does not read them again.
   */
  private unexpected(err: unknown, bytesSha256: string | null = null): { result: LoadResult; bytesSha256: string | null } {
    const message = err instanceof Error ? err.message : String(err);
    this.failure = { at: new Date().toISOString(), errors: [`${this.source}: cannot load policy: ${message}`] };
    return { result: { ok: false, error: this.failure }, bytesSha256 };
  }

  private async loadOnce(): Promise<{ result: LoadResult; bytesSha256: string | null }> {
    const loaded = await this.read(this.source);
    const errors = loaded.diagnostics.filter((d: Diagnostic) => d.severity === 'error').map(formatDiagnostic);
    const sha256 = loaded.bytes ? sha256Hex(loaded.bytes) : null;
    if (!loaded.spec || !sha256) {
      this.failure = { at: new Date().toISOString(), errors };
      return { result: { ok: false, error: this.failure }, bytesSha256: sha256 };
    }
    if (this.serving && this.serving.sha256 === sha256) {
      this.failure = null;
      return { result: { ok: true, generation: this.serving, changed: false }, bytesSha256: sha256 };
    }
    let policy: CompiledPolicy;
    try {
      policy = compilePolicy(loaded.spec);
    } catch (err) {
      return this.unexpected(err, sha256);
    }
    this.failure = null;
    const generation: PolicyGeneration = Object.freeze({
      generation: ++this.counter,
      policy,
      loadedAt: new Date().toISOString(),
      sha256,
      digest: sha256.slice(0, 12),
      source: this.source,
      egressRules: loaded.egressRules,
      skippedRules: loaded.skippedRules,
      warnings: loaded.diagnostics.filter((d) => d.severity === 'warning').map(formatDiagnostic),
    });
    this.serving = generation;
    return { result: { ok: true, generation, changed: true }, bytesSha256: sha256 };
  }
}
