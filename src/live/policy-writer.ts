/**
 * Writes the policy file for the admin API's edit routes, then loads it as a new generation.
 *
 * Threat and scope: a write changes what every guarded server may reach, so it must never land
 * half-done, on a stale view, or unvalidated. Each write runs in one in-process critical
 * section: the `If-Match` digest is compared with the file's bytes on disk, the new text is
 * validated exactly as a reload validates (positions are in the text that would be written),
 * written to a temporary file in the file's own directory, fsynced, checked once more against
 * the digest and renamed over the file (atomic on one filesystem), then loaded. Two writers
 * racing get one success and one 412. A writer outside this process (an editor) is caught by
 * the second digest check up to the rename; a change in the last microseconds before it is the
 * window no file lock closes (editors take none).
 *
 * A file the proxy must not change (a read-only mount such as a ConfigMap, an immutable file, a
 * file with no write permission bit for anyone, even when the proxy runs as root) gets
 * `policy_read_only` and is left alone. A symlinked policy (ConfigMap `..data`) is written
 * through to the file it names, never replaced by a regular file.
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { access, open, readFile, realpath, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { sha256Hex } from '../config/secret-hash.js';
import { formatDiagnostic } from '../config/yaml.js';
import type { Diagnostic } from '../config/yaml.js';
import { parsePolicy } from '../policy/schema.js';
import type { PolicyStore } from './policy-store.js';

export type WriteFailure = {
  readonly ok: false;
  readonly status: number;
  readonly code: string;
  readonly message: string;
  readonly extra?: Readonly<Record<string, unknown>>;
};

export type WriteOutcome =
  | {
      readonly ok: true;
      readonly generation: number;
      readonly sha256: string;
      readonly previousSha256: string;
      readonly warnings: readonly string[];
      readonly written: boolean;
    }
  | WriteFailure;

/** What an edit makes of the current text: the new text, or why there is none. */
export type Produce = (
  current: string,
) =>
  | { readonly ok: true; readonly text: string }
  | { readonly ok: false; readonly status: number; readonly code: string; readonly message: string };

export interface WriteRequest {
  /** The sha256 (hex) the client last saw: `If-Match`. */
  readonly ifMatch: string;
  /** The admin token's name, for the `policy.changed` event. */
  readonly who: string;
  /** e.g. `PUT /v1/rules/{id}`. */
  readonly route: string;
  readonly ruleId: string | null;
  readonly produce: Produce;
}

export interface PolicyWriterDeps {
  readonly store: PolicyStore;
  /** Loads the file as a new generation (serve.ts: logs policy.loaded / policy.rejected). */
  readonly reload: (trigger: string) => Promise<boolean>;
  /** Told the digest about to be written, so the file watcher does not load our own write a second time. */
  readonly expectDigest?: (digest: string | null) => void;
  readonly events: { info(fields: Record<string, unknown>, msg: string): void };
}

const READ_ONLY_CODES = new Set(['EROFS', 'EACCES', 'EPERM']);

/** A write that failed: 409 when the file or its directory cannot be written here, else 500. */
function writeFailed(file: string, code: string, err: unknown): WriteFailure {
  if (READ_ONLY_CODES.has(code)) return readOnly(file, code);
  return { ok: false, status: 500, code: 'policy_write_failed', message: `cannot write the policy file ${file}: ${code || String(err)}` };
}

function readOnly(file: string, why: string): WriteFailure {
  return {
    ok: false,
    status: 409,
    code: 'policy_read_only',
    message: `the policy file ${file} cannot be written here (${why}); change it where it comes from (e.g. its ConfigMap) and the proxy reloads it`,
  };
}

export class PolicyWriter {
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly deps: PolicyWriterDeps) {}

  get file(): string {
    return this.deps.store.source;
  }

  /** Runs `req` after every write before it (one at a time, in arrival order). */
  write(req: WriteRequest): Promise<WriteOutcome> {
    const run = this.queue.then(() => this.writeNow(req));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async writeNow(req: WriteRequest): Promise<WriteOutcome> {
    const file = this.file;
    let bytes: Buffer;
    try {
      bytes = await readFile(file);
    } catch (err) {
      return {
        ok: false,
        status: 500,
        code: 'policy_write_failed',
        message: `cannot read the policy file ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
      };
    }
    const current = sha256Hex(bytes);
    if (req.ifMatch !== current) {
      return {
        ok: false,
        status: 412,
        code: 'policy_changed',
        message:
          'the policy changed since you read it (If-Match does not match its sha256); read it again (GET /v1/policy) and redo the change',
        extra: { sha256: current },
      };
    }
    const produced = req.produce(bytes.toString('utf8'));
    if (!produced.ok) return { ok: false, status: produced.status, code: produced.code, message: produced.message };
    const text = produced.text;
    const validated = parsePolicy(file, text);
    const errors = validated.diagnostics.filter((d: Diagnostic) => d.severity === 'error');
    if (!validated.spec) {
      return {
        ok: false,
        status: 400,
        code: 'policy_invalid',
        message: `the policy that would be written is not valid (${errors.length} problem${errors.length === 1 ? '' : 's'}); nothing was written`,
        // Positions are in `content`, the text that would have been written.
        extra: {
          errors: errors.map(formatDiagnostic),
          problems: errors.map((d) => ({ line: d.line, col: d.col, message: d.message })),
          content: text,
        },
      };
    }
    const warnings = validated.diagnostics.filter((d) => d.severity === 'warning').map(formatDiagnostic);
    const next = Buffer.from(text, 'utf8');
    const nextSha = sha256Hex(next);
    if (nextSha === current) {
      // Nothing to write; the file may not be loaded yet (the watcher's debounce): load it first.
      if (this.deps.store.current.sha256 !== current) await this.deps.reload('api');
      const g = this.deps.store.current;
      return { ok: true, generation: g.generation, sha256: current, previousSha256: current, warnings, written: false };
    }
    const wrote = await this.replaceFile(file, next, current);
    if (wrote) return wrote;
    await this.deps.reload('api');
    const g = this.deps.store.current;
    if (g.sha256 !== nextSha) {
      return {
        ok: false,
        status: 500,
        code: 'policy_write_failed',
        message: 'the policy file was written but a different file was loaded (changed again meanwhile?); read it again (GET /v1/policy)',
      };
    }
    this.deps.events.info(
      {
        event: 'policy.changed',
        name: req.who,
        route: req.route,
        rule_id: req.ruleId,
        old_sha256: current,
        new_sha256: nextSha,
        generation: g.generation,
      },
      `policy changed by ${req.who} (${req.route}${req.ruleId ? ` ${req.ruleId}` : ''}): generation ${g.generation}`,
    );
    return { ok: true, generation: g.generation, sha256: nextSha, previousSha256: current, warnings, written: true };
  }

  /** Temp file in the same directory, fsync, last digest check, rename, directory fsync. Null when written. */
  private async replaceFile(file: string, next: Buffer, expected: string): Promise<WriteFailure | null> {
    let real: string;
    let mode: number;
    let uid: number;
    let gid: number;
    try {
      real = await realpath(file);
      const st = await stat(real);
      ({ mode, uid, gid } = st);
      // No write bit for anyone: the operator made it read-only (root would write it anyway).
      if ((mode & 0o222) === 0) return readOnly(file, 'it has no write permission');
      await access(real, constants.W_OK);
      await access(dirname(real), constants.W_OK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      return writeFailed(file, code, err);
    }
    const tmp = join(dirname(real), `.${basename(real)}.${randomBytes(6).toString('hex')}.tmp`);
    let created = false;
    let announced = false;
    try {
      const fh = await open(tmp, 'wx', mode & 0o777);
      created = true;
      try {
        await fh.writeFile(next);
        await fh.chmod(mode & 0o7777);
        if (process.getuid?.() === 0) await fh.chown(uid, gid).catch(() => undefined);
        await fh.sync();
      } finally {
        await fh.close();
      }
      if (sha256Hex(await readFile(real)) !== expected) {
        await unlink(tmp).catch(() => undefined);
        return {
          ok: false,
          status: 412,
          code: 'policy_changed',
          message: 'the policy file changed on disk while this write was prepared; read it again (GET /v1/policy)',
        };
      }
      this.deps.expectDigest?.(sha256Hex(next));
      announced = true;
      await rename(tmp, real);
      created = false;
    } catch (err) {
      if (created) await unlink(tmp).catch(() => undefined);
      // Nothing was written: the watcher checks the file again (a hand edit it had not read
      // yet may carry the digest the client sent).
      if (announced) this.deps.expectDigest?.(null);
      const code = (err as NodeJS.ErrnoException).code ?? '';
      return writeFailed(file, code, err);
    }
    // The rename itself is durable only once the directory is; some filesystems refuse a directory fsync.
    try {
      const dir = await open(dirname(real), 'r');
      await dir.sync().catch(() => undefined);
      await dir.close();
    } catch {
      // the file is written and renamed; only its durability across a power cut is less sure
    }
    return null;
  }
}
