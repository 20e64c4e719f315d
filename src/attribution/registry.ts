/**
 * Registered tool calls ("socket tags"): a trusted gateway tells the proxy, through the admin
 * API, that client C is running tool T as call id X until it says otherwise or a TTL passes. The
 * data path reads this when a connection carries no attribution header, and, with
 * `attribution.trust: registered`, to accept a call id only if the gateway registered it.
 */
export interface RegisteredCall {
  readonly callId: string;
  readonly tool: string;
  readonly client: string;
  readonly sessionId: string | null;
  readonly registeredAt: number;
  readonly expiresAt: number;
}

export interface CallRegistryOptions {
  readonly defaultTtlMs: number;
  /** Most open registrations per client (older ones are refused beyond it). */
  readonly maxPerClient?: number;
  readonly now?: () => number;
}

export class CallRegistry {
  private readonly byClient = new Map<string, Map<string, RegisteredCall>>();
  private readonly byId = new Map<string, RegisteredCall>();
  private readonly now: () => number;
  private readonly maxPerClient: number;

  constructor(private readonly options: CallRegistryOptions) {
    this.now = options.now ?? Date.now;
    this.maxPerClient = options.maxPerClient ?? 1024;
  }

  /** Registers a call; an id already registered (live) is replaced only for the same client. */
  register(input: { callId: string; tool: string; client: string; sessionId?: string | null; ttlMs?: number }): RegisteredCall | { error: string } {
    this.sweep();
    const existing = this.byId.get(input.callId);
    if (existing && existing.client !== input.client) return { error: 'call_id is registered for another client' };
    const calls = this.byClient.get(input.client) ?? new Map<string, RegisteredCall>();
    if (!existing && calls.size >= this.maxPerClient) return { error: `too many open calls for client (limit ${this.maxPerClient})` };
    const now = this.now();
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

  /** Every live registration of `client`. */
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

  get size(): number {
    return this.byId.size;
  }

  /** Drops expired registrations. */
  sweep(): void {
    const now = this.now();
    for (const call of this.byId.values()) if (call.expiresAt <= now) this.remove(call);
  }

  private remove(call: RegisteredCall): void {
    this.byId.delete(call.callId);
    const calls = this.byClient.get(call.client);
    calls?.delete(call.callId);
    if (calls && calls.size === 0) this.byClient.delete(call.client);
  }
}
