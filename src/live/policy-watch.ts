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
import { dirname } from 'node:path';
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

  constructor(private readonly options: PolicyWatcherOptions) {}

  /** Starts watching; `loadedDigest` is the digest of the bytes the serving policy was read from. */
  start(loadedDigest: string | null): void {
    this.lastDigest = loadedDigest;
    try {
      this.watcher = watch(dirname(this.options.file), { persistent: false }, () => this.schedule('watch'));
      this.watcher.on('error', () => this.restartWatch());
    } catch {
      // The directory may not be watchable (some network filesystems): the poll still works.
    }
    this.poller = setInterval(() => void this.poll(), this.options.pollMs ?? 2_000);
    this.poller.unref();
  }

  stop(): void {
    this.watcher?.close();
    this.watcher = null;
    if (this.timer) clearTimeout(this.timer);
    if (this.poller) clearInterval(this.poller);
  }

  private restartWatch(): void {
    this.watcher?.close();
    this.watcher = null;
    setTimeout(() => {
      if (this.poller === null) return;
      try {
        this.watcher = watch(dirname(this.options.file), { persistent: false }, () => this.schedule('watch'));
      } catch {
        // keep polling
      }
    }, 500).unref();
  }

  private schedule(trigger: string): void {
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
