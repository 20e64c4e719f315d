/**
 * The live feed of decisions (`GET /v1/events`, server-sent events) and the recent decisions
 * that a new stream starts with and that replay decides again.
 *
 * Threat and scope: the reader is a browser tab or a script, and may be slow, stalled, or the
 * guarded server itself (a viewer on a tokenless loopback listener). Nothing it does may slow
 * the data path or grow the proxy's memory. So the data path only copies the line the event
 * sink already serialised (no second formatting) into a fixed ring of bytes off the heap
 * (line-ring.ts: kept on the heap, the last 1,000 lines cost a quarter of the CPU of a plain-HTTP
 * request in garbage collection); the recent decisions are read back from their lines. Streams are served from a
 * timer in batches, each stream with a byte budget for what its socket has not taken yet: at or
 * over budget, decisions are dropped for that stream and counted (a metric, and a `dropped`
 * event on the stream once it drains), and a stream that stays over budget for a minute is
 * closed. So a stream holds at most its budget plus one batch. The number of streams is capped.
 */
import { parseDecisionLine } from './events.js';
import type { DecisionEvent, DecisionTap } from './events.js';
import { LineRing } from './line-ring.js';

/** Decisions kept for new streams and replay (interface.md: the last 1,000). */
export const FEED_CAPACITY = 1000;
/** Room for the last 1,000 lines up to 2 KiB each on average (a decision line is about 700 bytes). */
const FEED_BYTES_PER_LINE = 2048;
export const MAX_SUBSCRIBERS = 16;
/** Bytes a stream may have waiting for its client before decisions are dropped for it (plus one batch). */
export const SUBSCRIBER_BUDGET_BYTES = 1024 * 1024;
const FLUSH_MS = 50;
const HEARTBEAT_MS = 15_000;
/** A stream over budget this long is closed (it frees its slot; the client reconnects when it can). */
const STALLED_MS = 60_000;

/** A recorded decision, read back from its line. */
export class FeedEntry {
  private parsed: DecisionEvent | null = null;

  constructor(
    /** 1, 2, ... since start: the SSE `id`. */
    readonly seq: number,
    /** ms since the epoch, when the decision was logged. */
    readonly at: number,
    readonly line: string,
  ) {}

  /** The decision as its line tells it (parsed on first use: no `trace`, `uncovered` false). */
  get event(): DecisionEvent {
    return (this.parsed ??= parseDecisionLine(this.line));
  }
}

/** The writable side of a stream (an http.ServerResponse). */
export interface FeedStream {
  readonly writableLength: number;
  write(chunk: string): unknown;
  destroy(): void;
}

export interface FeedOptions {
  readonly capacity?: number;
  readonly maxSubscribers?: number;
  readonly budgetBytes?: number;
  readonly flushMs?: number;
  readonly heartbeatMs?: number;
  readonly stalledMs?: number;
}

/** Which decisions a stream wants; null: all of them. */
export type FeedMatcher = ((e: DecisionEvent) => boolean) | null;

interface Subscriber {
  readonly stream: FeedStream;
  readonly matches: FeedMatcher;
  /** Dropped since the last `dropped` notice. */
  dropped: number;
  overSince: number | null;
}

function frame(seq: number, line: string): string {
  // A line is one JSON object ending in a newline, with no raw newline inside (JSON escapes them).
  return `id: ${seq}\nevent: decision\ndata: ${line.endsWith('\n') ? line.slice(0, -1) : line}\n\n`;
}

export class DecisionFeed implements DecisionTap {
  private readonly capacity: number;
  private readonly maxSubscribers: number;
  private readonly budget: number;
  private readonly flushMs: number;
  private readonly heartbeatMs: number;
  private readonly stalledMs: number;
  private readonly ring: LineRing;
  /** The decisions since the last flush, kept only while a stream is open (for its filter). */
  private readonly unsentEvents: DecisionEvent[] = [];
  private readonly unsentLines: string[] = [];
  private readonly subscribers = new Set<Subscriber>();
  private flushTimer: NodeJS.Timeout | null = null;
  private heartbeat: NodeJS.Timeout | null = null;
  /** Decisions dropped for slow streams since start (the metric). */
  droppedTotal = 0;

  constructor(options: FeedOptions = {}) {
    this.capacity = options.capacity ?? FEED_CAPACITY;
    this.maxSubscribers = options.maxSubscribers ?? MAX_SUBSCRIBERS;
    this.budget = options.budgetBytes ?? SUBSCRIBER_BUDGET_BYTES;
    this.flushMs = options.flushMs ?? FLUSH_MS;
    this.heartbeatMs = options.heartbeatMs ?? HEARTBEAT_MS;
    this.stalledMs = options.stalledMs ?? STALLED_MS;
    this.ring = new LineRing(this.capacity, this.capacity * FEED_BYTES_PER_LINE);
  }

  private get count(): number {
    return this.ring.count;
  }

  /** The data path: copies the line into the ring; open streams get it from the timer. */
  decision(event: DecisionEvent, line: string): void {
    this.ring.push(line, Date.now());
    if (this.subscribers.size === 0) return;
    this.unsentEvents.push(event);
    this.unsentLines.push(line);
    // As many unsent decisions as the ring holds: send now (a batch is at most `capacity`).
    if (this.unsentLines.length >= this.capacity) this.flush();
    else if (this.flushTimer === null) this.flushTimer = setTimeout(this.onFlushTimer, this.flushMs).unref();
  }

  get subscriberCount(): number {
    return this.subscribers.size;
  }

  /** The most bytes any stream has waiting for its client (bounded by the budget). */
  maxBacklog(): number {
    let max = 0;
    for (const sub of this.subscribers) max = Math.max(max, sub.stream.writableLength);
    return max;
  }

  get limit(): number {
    return this.maxSubscribers;
  }

  /** The recorded decisions, oldest first: at most `limit`, the most recent ones. */
  recent(limit = this.capacity): FeedEntry[] {
    const out: FeedEntry[] = [];
    for (let seq = Math.max(this.ring.first, this.count - limit + 1); seq <= this.count; seq++) {
      const held = this.ring.get(seq);
      if (held !== null) out.push(new FeedEntry(seq, held.at, held.line));
    }
    return out;
  }

  /**
   * Starts a stream: the recorded decisions that match (after `lastEventId` when given), then
   * each new one. Null when the subscriber cap is reached. The returned function ends it.
   */
  subscribe(stream: FeedStream, matches: FeedMatcher, lastEventId: number | null = null): (() => void) | null {
    if (this.subscribers.size >= this.maxSubscribers) return null;
    // Anything recorded but not yet flushed goes out now, so the new stream neither misses nor repeats it.
    this.flush();
    // An id from before a restart (ids start again at 1) means nothing here: start full.
    if (lastEventId !== null && lastEventId > this.count) lastEventId = null;
    const sub: Subscriber = { stream, matches, dropped: 0, overSince: null };
    // Over the budget the oldest are left out, not the newest: an operator opening the console
    // sees the latest decisions (a client making fat lines must not hide its latest calls behind
    // its earlier ones). The newest first, then written oldest first.
    const header = `retry: 2000\n\n`;
    const frames: string[] = [];
    let size = header.length;
    const recent = this.recent();
    for (let i = recent.length - 1; i >= 0; i--) {
      const e = recent[i] as FeedEntry;
      if (lastEventId !== null && e.seq <= lastEventId) break;
      if (matches !== null && !matches(e.event)) continue;
      const f = frame(e.seq, e.line);
      if (size + f.length > this.budget) {
        sub.dropped++;
        this.droppedTotal++;
        size = this.budget; // nothing older after a gap
      } else {
        frames.push(f);
        size += f.length;
      }
    }
    stream.write(header + frames.reverse().join(''));
    this.subscribers.add(sub);
    if (this.heartbeat === null) this.heartbeat = setInterval(this.onHeartbeat, this.heartbeatMs).unref();
    return () => this.unsubscribe(sub);
  }

  private unsubscribe(sub: Subscriber): void {
    this.subscribers.delete(sub);
    if (this.subscribers.size > 0) return;
    // Nobody to send them to: the unsent decisions are in the ring for the next stream.
    this.unsentEvents.length = this.unsentLines.length = 0;
    if (this.heartbeat !== null) {
      clearInterval(this.heartbeat);
      this.heartbeat = null;
    }
  }

  /** Ends every stream (shutdown). */
  close(): void {
    for (const sub of [...this.subscribers]) {
      this.unsubscribe(sub);
      sub.stream.destroy();
    }
    if (this.flushTimer !== null) clearTimeout(this.flushTimer);
    this.flushTimer = null;
  }

  private readonly onFlushTimer = (): void => {
    this.flushTimer = null;
    this.flush();
  };

  /**
   * Sends each stream the decisions since the last flush that match it. A stream whose client
   * has `budget` bytes or more not yet taken gets none of them (dropped and counted), so what
   * waits for a client is at most the budget plus one batch (at most `capacity` decisions).
   */
  flush(): void {
    const events = this.unsentEvents;
    const lines = this.unsentLines;
    if (lines.length === 0) return;
    // The unsent decisions are the newest ones (kept only while a stream is open).
    const from = this.count - lines.length + 1;
    for (const sub of this.subscribers) {
      const full = sub.stream.writableLength >= this.budget;
      let out = '';
      if (!full && sub.dropped > 0) {
        out += `event: dropped\ndata: {"dropped":${sub.dropped}}\n\n`;
        sub.dropped = 0;
      }
      let dropped = 0;
      for (let i = 0; i < lines.length; i++) {
        if (sub.matches !== null && !sub.matches(events[i] as DecisionEvent)) continue;
        if (full) dropped++;
        else out += frame(from + i, lines[i] as string);
      }
      if (out !== '') sub.stream.write(out);
      sub.dropped += dropped;
      this.droppedTotal += dropped;
      if (!full) sub.overSince = null;
      else sub.overSince ??= Date.now();
    }
    events.length = lines.length = 0;
  }

  private readonly onHeartbeat = (): void => {
    const now = Date.now();
    for (const sub of [...this.subscribers]) {
      const waiting = sub.stream.writableLength;
      if (waiting < this.budget) sub.overSince = null;
      else if (sub.overSince !== null && now - sub.overSince > this.stalledMs) {
        this.unsubscribe(sub);
        sub.stream.destroy();
        continue;
      }
      if (waiting >= this.budget) continue;
      // A comment line keeps proxies and browsers from timing the stream out.
      let out = ': heartbeat\n\n';
      if (sub.dropped > 0) {
        out += `event: dropped\ndata: {"dropped":${sub.dropped}}\n\n`;
        sub.dropped = 0;
      }
      sub.stream.write(out);
    }
  };
}
