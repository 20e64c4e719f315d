/**
 * The pinned dial: connect to one of the addresses the decision vetted, and to nothing else.
 *
 * Threat: DNS rebinding. A name that resolved to a public address when the policy looked at it
 * can resolve to 169.254.169.254 a millisecond later; a proxy that hands the *name* to
 * `net.connect` (or to an agent that pools by name) resolves it again and dials wherever it
 * points now. Here the dial gets IP literals only (`net.connect({ host: ip })` never calls
 * `lookup` for a literal), tried in the order the resolver returned them, each with its own
 * connect timeout. What was checked is what is dialled.
 *
 * Scope: TCP connection establishment. Deciding which addresses are acceptable is the
 * caller's (baseline.ts, policy/evaluate.ts); TLS is the client's, end to end through the tunnel.
 */
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import type { IpAddress } from './address.js';

export class DialError extends Error {
  constructor(
    /** `timeout` when every failure was a timeout, else `unreachable`. */
    readonly kind: 'timeout' | 'unreachable',
    readonly attempts: ReadonlyArray<{ address: string; error: string }>,
  ) {
    super(`could not connect: ${attempts.map((a) => `${a.address} ${a.error}`).join('; ')}`);
    this.name = 'DialError';
  }
}

export interface PinnedConnection {
  readonly socket: Socket;
  /** The vetted address that answered. */
  readonly address: IpAddress;
}

function dialOne(ip: IpAddress, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: ip.text, port, family: ip.family, noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' }));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      resolve(socket);
    });
    const onError = (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    socket.once('error', onError);
  });
}

/** Set `aborted` to abandon a dial (the client went away); an AbortSignal will do. */
export interface DialCancel {
  readonly aborted: boolean;
}

/**
 * Connects to the first of `candidates` that accepts, in order. `signal` abandons the dial
 * between attempts. Rejects with DialError when none accepts.
 */
export async function pinnedDial(
  candidates: readonly IpAddress[],
  port: number,
  timeoutMs: number,
  signal?: DialCancel,
): Promise<PinnedConnection> {
  const attempts: Array<{ address: string; error: string }> = [];
  for (const address of candidates) {
    if (signal?.aborted) break;
    try {
      const socket = await dialOne(address, port, timeoutMs);
      if (signal?.aborted) {
        socket.destroy();
        break;
      }
      return { socket, address };
    } catch (err) {
      attempts.push({ address: address.text, error: (err as NodeJS.ErrnoException).code ?? (err as Error).message });
    }
  }
  if (signal?.aborted) attempts.push({ address: '-', error: 'aborted' });
  const allTimeouts = attempts.length > 0 && attempts.every((a) => a.error === 'ETIMEDOUT');
  throw new DialError(allTimeouts ? 'timeout' : 'unreachable', attempts);
}
