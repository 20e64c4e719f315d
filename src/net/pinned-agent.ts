/**
 * Keep-alive for plain HTTP without giving up the pin. An http.Agent pools sockets by the
 * request's `host`; here that host is always a vetted IP literal (the name travels only in the
 * Host header), so a pooled socket is reused only for a later call whose decision vetted that
 * same address. New sockets come from the pinned dial (candidates in order, connect timeout);
 * a socket that had to fall back to another candidate is connected to an address other than
 * its pool key, so it serves its one request and is never pooled.
 */
import { Agent } from 'node:http';
import type { AgentOptions, ClientRequestArgs } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { IpAddress } from './address.js';
import { pinnedDial } from './pinned-dial.js';

/** Request options the pinned agent reads: the vetted candidates, first one = `host`. */
export interface PinnedRequestOptions extends ClientRequestArgs {
  candidates: readonly IpAddress[];
  connectTimeoutMs: number;
}

const PINNED_TO = Symbol('pinnedTo');
const POOL_KEY = Symbol('poolKey');

type PinnedSocket = Socket & { [PINNED_TO]?: string; [POOL_KEY]?: string };

export class PinnedAgent extends Agent {
  constructor(options: AgentOptions = {}) {
    super({ keepAlive: true, scheduling: 'lifo', maxFreeSockets: 256, timeout: 4_000, ...options });
  }

  override createConnection(options: ClientRequestArgs, callback: (err: Error | null, socket?: Duplex) => void): Duplex | undefined {
    const { candidates, connectTimeoutMs, host, port } = options as PinnedRequestOptions;
    pinnedDial(candidates, Number(port), connectTimeoutMs).then(
      ({ socket, address }) => {
        (socket as PinnedSocket)[PINNED_TO] = address.text;
        (socket as PinnedSocket)[POOL_KEY] = String(host);
        callback(null, socket);
      },
      (err: Error) => callback(err),
    );
    return undefined;
  }

  override keepSocketAlive(socket: Socket): boolean {
    const pinned = socket as PinnedSocket;
    if (pinned[PINNED_TO] === undefined || pinned[PINNED_TO] !== pinned[POOL_KEY]) return false;
    return super.keepSocketAlive(socket) as unknown as boolean;
  }
}

/** The address a socket from the pinned agent is connected to. */
export function pinnedAddressOf(socket: Socket): string | null {
  return (socket as PinnedSocket)[PINNED_TO] ?? null;
}
