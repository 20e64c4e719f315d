/**
 * Reloads the policy when its file changes. Watches the file's directory, not only the file:
 * editors save by writing a new file and renaming it over the old one, and Kubernetes
 * ConfigMap volumes swap a `..data` symlink, and a watch on the file alone sees neither. Bursts
 * of events are debounced; the store compares the bytes' SHA-256, so an event that changed
 * nothing makes no new generation. A slow poll backs the watch up (watches can be lost when a
 * directory is replaced), so a change is never missed for long.
 *
 * What counts as seen is what was read: the loader tells the watcher the digest of every read
 * (`expect`), starting with the one it served at start. A read that failed (null) or an edit
 * made between the start's read and the watch is therefore loaded by the next event or poll,
 * never taken as already loaded.
 */
import { watch } from 'node:fs';
import type { FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { sha256Hex } from '../config/secret-hash.js';

export interface PolicyWatcherOptions {
  readonly file: string;
  readonly reload: (trigger: string) => Promise<unknown>;
  readonly debounceMs?: number;
  readonly pollMs?: number;
}

export class PolicyWatcher {
  private watcher: FSWatcher | null = null;
  private timer: NodeJS.Timeout | null = null;
  private poller: NodeJS.Timeout | null = null;
  private lastDigest: string | null = null;
  private stopped = false;
  /** The names whose events concern the file: itself, and a ConfigMap's `..data` symlink. */
  private readonly names: ReadonlySet<string>;

  constructor(private readonly options: PolicyWatcherOptions) {
    this.names = new Set([basename(options.file), '..data']);
  }

  /** Starts watching; `loadedDigest` is the digest of the bytes the serving policy was read from. */
  start(loadedDigest: string | null): void {
    this.lastDigest = loadedDigest;
    this.openWatch();
    this.poller = setInterval(() => void this.poll(), this.options.pollMs ?? 2_000);
    this.poller.unref();
  }

  stop(): void {
    this.stopped = true;
    this.watcher?.close();
    this.watcher = null;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.poller) clearInterval(this.poller);
    this.poller = null;
  }

  private openWatch(): void {
    try {
      // Only events about the file itself restart the debounce: a busy neighbour in the same
      // directory (a log written every few milliseconds) would otherwise hold a load off for
      // as long as it is busy. An event without a name is taken as about the file.
      this.watcher = watch(dirname(this.options.file), { persistent: false }, (_event, name) => {
        if (name === null || this.names.has(name.toString())) this.schedule('watch');
      });
      this.watcher.on('error', () => this.restartWatch());
    } catch {
      // The directory may not be watchable (some network filesystems): the poll still works.
    }
  }

  private restartWatch(): void {
    this.watcher?.close();
    this.watcher = null;
    setTimeout(() => {
      if (!this.stopped) this.openWatch();
    }, 500).unref();
  }

  private schedule(trigger: string): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.fire(trigger);
    }, this.options.debounceMs ?? 100);
  }

  private async digest(): Promise<string | null> {
    try {
      return sha256Hex(await readFile(this.options.file));
    } catch {
      return null;
    }
  }

  private async poll(): Promise<void> {
    const digest = await this.digest();
    if (digest !== this.lastDigest) this.schedule('poll');
  }

  /**
   * The digest of bytes just read by a load (null: the read failed), or that the file is about to
   * have because this process writes it (the admin API's edits, which load it themselves): the
   * events of that write or read then cause no second load.
   */
  expect(digest: string | null): void {
    this.lastDigest = digest;
  }

  private async fire(trigger: string): Promise<void> {
    const digest = await this.digest();
    // Bytes already read by a load (or written and loaded by us): nothing new to load. The load
    // itself records what it read (`expect`): bytes it could not read stay unseen.
    if (digest === this.lastDigest) return;
    await this.options.reload(trigger);
  }
}
