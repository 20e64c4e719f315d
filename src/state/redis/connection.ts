/**
 * The one Redis connection the shared stores use (`state.store: redis`), and the two ways they
 * use it: reads a decision waits on, and writes no decision waits on.
 *
 * Threat and scope: Redis is shared by every replica, so a Redis that is down, slow or
 * restarted must never make a replica decide with state it could not read. A read rejects with
 * `StateUnavailableError` when the connection is not ready (no offline queue: a command is
 * never parked to be sent later) or when no answer came within `timeout_ms`; the caller refuses
 * the call (`state_unavailable`). Writes are fire-and-forget for the caller: a write that
 * certainly did not reach Redis (offline), or that is idempotent, is retried from a bounded
 * queue until Redis is back; when the queue is full the oldest write is dropped, and every drop
 * is counted. Reads and background writes use two connections, so a burst of writes never
 * queues in front of a decision's read (head-of-line blocking would turn load into refusals).
 * The password comes from $MCP_EGRESS_REDIS_PASSWORD or the URL and is handed to
 * the client only: log lines and errors name the URL with the password redacted. Redis Cluster
 * is out of scope (scripts touch keys they compute): one primary, standalone or managed.
 */
import { ClientOfflineError, createClient, ErrorReply } from '@redis/client';
import type { RedisClientType } from '@redis/client';
import { createHash } from 'node:crypto';
import { redactRedisUrl } from '../../config/proxy-config.js';
import { StateUnavailableError } from '../types.js';

export interface RedisConnectionOptions {
  readonly url: string;
  /** Overrides the URL's password ($MCP_EGRESS_REDIS_PASSWORD). */
  readonly password?: string;
  readonly timeoutMs: number;
  /** Extra CA certificates for `rediss://` (tests; operators use NODE_EXTRA_CA_CERTS). */
  readonly tlsCa?: string;
  /** Called when the connection becomes ready or is lost. */
  readonly onHealth?: (up: boolean) => void;
  /** Called for each background write dropped, with why. */
  readonly onDropped?: (reason: DropReason) => void;
  /** Called for each background write retried. */
  readonly onRetried?: () => void;
  readonly warn?: (fields: Record<string, unknown>, message: string) => void;
  /** Bound of the retry queue (default 10,000 writes). */
  readonly maxQueued?: number;
}

/**
 * `queue_full`: the retry queue held `maxQueued` writes, the oldest went; `unknown_outcome`: a
 * non-idempotent write (a count) was sent but its answer was lost, so retrying might count it
 * twice; `rejected`: Redis answered with an error (a script bug or a misconfigured server).
 */
export type DropReason = 'queue_full' | 'unknown_outcome' | 'rejected';

export interface Script {
  readonly source: string;
  readonly sha1: string;
}

export function script(source: string): Script {
  return { source, sha1: createHash('sha1').update(source).digest('hex') };
}

interface Write {
  readonly run: () => Promise<unknown>;
  readonly idempotent: boolean;
  /** Told once whether the write reached Redis (true) or was dropped (false). */
  readonly settled?: (applied: boolean) => void;
}

type Reply = unknown;

const MAX_IN_FLIGHT = 1_000;
const RETRY_EVERY_MS = 200;

export class RedisConnection {
  /** Reads a decision waits on, and registrations. */
  readonly client: RedisClientType;
  /** Background writes only. */
  private readonly writer: RedisClientType;
  private ready = false;
  private writerReady = false;
  private readonly queue: Write[] = [];
  private inFlight = 0;
  private readonly retryTimer: NodeJS.Timeout;
  private readonly maxQueued: number;
  private closed = false;
  private readonly readScripts = new Set<Script>();
  readonly redactedUrl: string;

  constructor(private readonly options: RedisConnectionOptions) {
    this.maxQueued = options.maxQueued ?? 10_000;
    this.redactedUrl = redactRedisUrl(options.url);
    const url = new URL(options.url);
    const password = options.password ?? (url.password !== '' ? decodeURIComponent(url.password) : undefined);
    const username = url.username !== '' ? decodeURIComponent(url.username) : undefined;
    url.username = '';
    url.password = '';
    const tls = url.protocol === 'rediss:';
    const make = () =>
      createClient({
        url: url.toString(),
        username,
        password,
        // Fail closed: a command while disconnected is refused now, never sent after a reconnect.
        disableOfflineQueue: true,
        disableClientInfo: true,
        socket: {
          connectTimeout: Math.max(1_000, options.timeoutMs * 4),
          // Reconnect forever, quickly at first, then every second: healing needs no restart.
          reconnectStrategy: (retries: number) => Math.min(25 * 2 ** Math.min(retries, 6), 1_000),
          ...(tls ? { tls: true as const, ...(options.tlsCa ? { ca: [options.tlsCa] } : {}) } : {}),
        },
      }) as unknown as RedisClientType;
    this.client = make();
    this.writer = make();
    this.client.on('ready', () => {
      // Scripts a decision's read runs, loaded before it needs them: an EVALSHA that finds no
      // script costs a second round trip (EVAL).
      for (const script of this.readScripts) this.client.sendCommand(['SCRIPT', 'LOAD', script.source]).catch(() => undefined);
      this.setReady(true);
    });
    this.client.on('end', () => this.setReady(false));
    this.client.on('reconnecting', () => this.setReady(false));
    // Without a listener an 'error' event would end the process; the message never holds the URL's password.
    this.client.on('error', (err: Error) => {
      const wasReady = this.ready;
      this.setReady(false);
      if (wasReady) options.warn?.({ event: 'state.error', url: this.redactedUrl, err: err.message }, 'state store connection lost');
    });
    this.writer.on('ready', () => {
      this.writerReady = true;
      this.drain();
    });
    this.writer.on('end', () => (this.writerReady = false));
    this.writer.on('reconnecting', () => (this.writerReady = false));
    this.writer.on('error', () => (this.writerReady = false));
    this.retryTimer = setInterval(() => this.drain(), RETRY_EVERY_MS).unref();
  }

  /** Starts connecting; resolves at once (a Redis that is down heals later by itself). */
  start(): void {
    this.client.connect().catch((err: Error) => {
      if (!this.closed)
        this.options.warn?.({ event: 'state.error', url: this.redactedUrl, err: err.message }, 'state store: could not connect');
    });
    this.writer.connect().catch(() => {
      // the reader's line says it
    });
  }

  get up(): boolean {
    return this.ready;
  }

  private setReady(up: boolean): void {
    if (up === this.ready) return;
    this.ready = up;
    this.options.onHealth?.(up);
  }

  /**
   * A read a decision waits on: rejects with `StateUnavailableError` when the connection is not
   * ready or no answer came within `timeout_ms` (the late answer, if any, is ignored).
   */
  read<T>(run: () => Promise<T>): Promise<T> {
    if (!this.ready) return Promise.reject(new StateUnavailableError('the state store is not connected'));
    const ms = this.options.timeoutMs;
    return new Promise<T>((resolve, reject) => {
      // When the timer fires, an answer that already arrived may still wait in the poll phase of
      // this same loop turn (a busy process): it gets that turn (setImmediate runs after poll)
      // before the read counts as timed out. A settled promise ignores the later reject.
      const timer = setTimeout(
        () => setImmediate(() => reject(new StateUnavailableError(`the state store did not answer within ${ms} ms`))),
        ms,
      );
      run().then(
        (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(
            err instanceof ErrorReply
              ? err
              : new StateUnavailableError(`the state store failed: ${(err as Error)?.message ?? String(err)}`),
          );
        },
      );
    });
  }

  /** A write no decision waits on: sent now, or retried later; never throws, never blocks. */
  write(run: () => Promise<unknown>, idempotent: boolean, settled?: (applied: boolean) => void): void {
    const w: Write = { run, idempotent, settled };
    if (!this.writerReady || this.inFlight >= MAX_IN_FLIGHT || this.queue.length > 0) this.enqueue(w);
    else this.send(w);
  }

  /** Writes waiting to be retried. */
  get queued(): number {
    return this.queue.length;
  }

  private send(w: Write): void {
    this.inFlight++;
    w.run().then(
      () => {
        this.inFlight--;
        w.settled?.(true);
      },
      (err: unknown) => {
        this.inFlight--;
        if (err instanceof ErrorReply) this.dropped(w, 'rejected');
        // Offline: the command was never sent, so a retry cannot apply it twice.
        else if (err instanceof ClientOfflineError || w.idempotent) this.enqueue(w, true);
        else this.dropped(w, 'unknown_outcome');
      },
    );
  }

  private enqueue(w: Write, retry = false): void {
    if (this.closed) return;
    if (retry) this.options.onRetried?.();
    this.queue.push(w);
    if (this.queue.length > this.maxQueued) this.dropped(this.queue.shift() as Write, 'queue_full');
  }

  private dropped(w: Write, reason: DropReason): void {
    this.options.onDropped?.(reason);
    w.settled?.(false);
  }

  private drain(): void {
    while (this.writerReady && this.queue.length > 0 && this.inFlight < MAX_IN_FLIGHT) this.send(this.queue.shift() as Write);
  }

  /** A script decisions read with: loaded on every (re)connection. */
  loadForReads(s: Script): void {
    this.readScripts.add(s);
    if (this.ready) this.client.sendCommand(['SCRIPT', 'LOAD', s.source]).catch(() => undefined);
  }

  /** EVALSHA, loading the script with EVAL when Redis does not know it (after a restart). */
  eval(s: Script, keys: readonly string[], args: readonly string[]): Promise<Reply> {
    return evalOn(this.client, s, keys, args);
  }

  /** `eval` on the background writes' connection (inside `write`). */
  evalInBackground(s: Script, keys: readonly string[], args: readonly string[]): Promise<Reply> {
    return evalOn(this.writer, s, keys, args);
  }

  command(args: readonly string[]): Promise<Reply> {
    return this.client.sendCommand([...args]);
  }

  /** Sends what is queued (for up to `graceMs`), then closes. */
  async close(graceMs = 1_000): Promise<void> {
    const deadline = Date.now() + graceMs;
    while ((this.queue.length > 0 || this.inFlight > 0) && this.writerReady && Date.now() < deadline) {
      this.drain();
      await new Promise((r) => setTimeout(r, 10));
    }
    this.closed = true;
    clearInterval(this.retryTimer);
    this.queue.length = 0;
    for (const client of [this.client, this.writer]) {
      try {
        if (client.isOpen) client.destroy();
      } catch {
        // already closed
      }
    }
  }
}

async function evalOn(client: RedisClientType, s: Script, keys: readonly string[], args: readonly string[]): Promise<Reply> {
  const tail = [String(keys.length), ...keys, ...args];
  try {
    return await client.sendCommand(['EVALSHA', s.sha1, ...tail]);
  } catch (err) {
    if (err instanceof ErrorReply && err.message.startsWith('NOSCRIPT')) return client.sendCommand(['EVAL', s.source, ...tail]);
    throw err;
  }
}
