/**
 * Registered tool calls ("socket tags"): a trusted gateway tells the proxy, through the admin
 * API, that client C is running tool T as call id X until it says otherwise or a TTL passes. The
 * data path reads this when a connection carries no attribution header, and, with
 * `attribution.trust: registered`, to accept a call id only if the gateway registered it.
 *
 * Threat and scope: whoever may register (a developer token) could otherwise grow this without
 * bound, and a registration that costs time in the size of the registry makes many of them a
 * denial of service for every other registration. So the registry has a global cap
 * (`limits.max_registered_calls`) besides the per-client one, and expiry is kept in a
 * time-ordered heap: a registration costs O(log n) plus the expired entries it removes, never a
 * pass over the whole registry.
 */
import type { CallStore, Registration, RegisteredCall, RegistrationRefused } from './types.js';

export type { RegisteredCall, RegistrationRefused } from './types.js';

export interface CallRegistryOptions {
  readonly defaultTtlMs: number;
  /** Most open registrations per client (new ones are refused beyond it). */
  readonly maxPerClient?: number;
  /** Most open registrations in all (`limits.max_registered_calls`). */
  readonly maxTotal?: number;
  readonly now?: () => number;
}

export const DEFAULT_MAX_PER_CLIENT = 1024;
export const DEFAULT_MAX_TOTAL = 100_000;

/** The one-process store (`state.store: memory`): every read answers at once, without a promise. */
export class CallRegistry implements CallStore {
  private readonly byClient = new Map<string, Map<string, RegisteredCall>>();
  private readonly byId = new Map<string, RegisteredCall>();
  /**
   * Every registration by `expiresAt` (a binary min-heap). Ended or replaced registrations stay
   * in it until they reach the top or the heap is rebuilt (`byId` says which entries are live).
   */
  private heap: RegisteredCall[] = [];
  private readonly now: () => number;
  private readonly maxPerClient: number;
  private readonly maxTotal: number;

  constructor(private readonly options: CallRegistryOptions) {
    this.now = options.now ?? Date.now;
    this.maxPerClient = options.maxPerClient ?? DEFAULT_MAX_PER_CLIENT;
    this.maxTotal = options.maxTotal ?? DEFAULT_MAX_TOTAL;
  }

  /** Registers a call; an id already registered (live) is replaced only for the same client. */
  register(input: Registration): RegisteredCall | RegistrationRefused {
    const now = this.now();
    this.expire(now);
    const existing = this.byId.get(input.callId);
    if (existing && existing.client !== input.client) return { error: 'call_id is registered for another client', code: 'conflict' };
    const calls = this.byClient.get(input.client) ?? new Map<string, RegisteredCall>();
    if (!existing && calls.size >= this.maxPerClient)
      return { error: `too many open calls for client (limit ${this.maxPerClient})`, code: 'client_limit' };
    if (!existing && this.byId.size >= this.maxTotal) {
      return {
        error: `the proxy holds ${this.byId.size} open registered calls (limits.max_registered_calls); end some or try again later`,
        code: 'registry_full',
      };
    }
    const call: RegisteredCall = {
      callId: input.callId,
      tool: input.tool,
      client: input.client,
      sessionId: input.sessionId ?? null,
      registeredAt: now,
      expiresAt: now + (input.ttlMs ?? this.options.defaultTtlMs),
    };
    calls.set(call.callId, call);
    this.byClient.set(call.client, calls);
    this.byId.set(call.callId, call);
    this.push(call);
    return call;
  }

  end(callId: string): boolean {
    const call = this.byId.get(callId);
    if (!call) return false;
    this.remove(call);
    return true;
  }

  /** The live registration of `callId` for `client`, or null (unknown, expired, or another client's). */
  find(client: string, callId: string): RegisteredCall | null {
    const call = this.byClient.get(client)?.get(callId);
    if (!call) return null;
    if (call.expiresAt <= this.now()) {
      this.remove(call);
      return null;
    }
    return call;
  }

  /** Every live registration of `client` (at most `maxPerClient`). */
  open(client: string): RegisteredCall[] {
    const calls = this.byClient.get(client);
    if (!calls) return [];
    const now = this.now();
    const live: RegisteredCall[] = [];
    for (const call of calls.values()) {
      if (call.expiresAt > now) live.push(call);
      else this.remove(call);
    }
    return live;
  }

  size(): number {
    return this.byId.size;
  }

  /** Drops expired registrations (the periodic timer; registering does it too). */
  sweep(): void {
    this.expire(this.now());
  }

  /** Pops every entry whose time has come; live ones among them are removed. */
  private expire(now: number): void {
    const heap = this.heap;
    while (heap.length > 0 && (heap[0] as RegisteredCall).expiresAt <= now) {
      const top = this.pop();
      if (this.byId.get(top.callId) === top) this.remove(top);
    }
  }

  private remove(call: RegisteredCall): void {
    if (this.byId.get(call.callId) === call) this.byId.delete(call.callId);
    const calls = this.byClient.get(call.client);
    if (calls?.get(call.callId) === call) calls.delete(call.callId);
    if (calls && calls.size === 0) this.byClient.delete(call.client);
  }

  private push(call: RegisteredCall): void {
    // Ended and replaced entries wait in the heap for their expiry; when they outnumber the live
    // ones, rebuild it from the live ones (linear, and at most once per as many pushes).
    if (this.heap.length >= 2 * this.byId.size + 1024) this.rebuild();
    const heap = this.heap;
    let i = heap.length;
    heap.push(call);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = heap[parent] as RegisteredCall;
      if (p.expiresAt <= call.expiresAt) break;
      heap[i] = p;
      i = parent;
    }
    heap[i] = call;
  }

  private pop(): RegisteredCall {
    const heap = this.heap;
    const top = heap[0] as RegisteredCall;
    const last = heap.pop() as RegisteredCall;
    if (heap.length > 0) {
      heap[0] = last;
      this.siftDown(0);
    }
    return top;
  }

  private siftDown(start: number): void {
    const heap = this.heap;
    const n = heap.length;
    const item = heap[start] as RegisteredCall;
    let i = start;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= n) break;
      const right = left + 1;
      const child = right < n && (heap[right] as RegisteredCall).expiresAt < (heap[left] as RegisteredCall).expiresAt ? right : left;
      if ((heap[child] as RegisteredCall).expiresAt >= item.expiresAt) break;
      heap[i] = heap[child] as RegisteredCall;
      i = child;
    }
    heap[i] = item;
  }

  private rebuild(): void {
    this.heap = [...this.byId.values()];
    for (let i = (this.heap.length >> 1) - 1; i >= 0; i--) this.siftDown(i);
  }
}
