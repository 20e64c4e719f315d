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
import type { NetConnectOpts, OnReadOpts, Socket } from 'node:net';
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

/** Set `aborted` to abandon a dial (the client went away); an AbortSignal will do. */
export interface DialCancel {
  readonly aborted: boolean;
}

/**
 * Connects to the first of `candidates` that accepts, in order, and calls `done` once: with the
 * connection, or with a DialError when none accepts. `cancel` abandons the dial between
 * attempts. Callbacks, not a promise: this is on every CONNECT.
 *
 * With `readInto` (Node's `onread`), the socket reads into the buffers it gives and starts
 * paused: nothing is read before the caller resumes it.
 */
export function dialPinned(
  candidates: readonly IpAddress[],
  port: number,
  timeoutMs: number,
  cancel: DialCancel | undefined,
  done: (err: DialError | null, conn: PinnedConnection | null) => void,
  readInto?: OnReadOpts,
): void {
  new PinnedDial(candidates, port, timeoutMs, cancel, done, readInto).next();
}

/** The promise form of `dialPinned` (the plain-HTTP pool). */
export function pinnedDial(
  candidates: readonly IpAddress[],
  port: number,
  timeoutMs: number,
  cancel?: DialCancel,
): Promise<PinnedConnection> {
  return new Promise((resolve, reject) =>
    dialPinned(candidates, port, timeoutMs, cancel, (err, conn) => (err ? reject(err) : resolve(conn as PinnedConnection))),
  );
}

/** One dial: the attempts so far, and the socket and timer of the current one. */
class PinnedDial {
  private readonly attempts: Array<{ address: string; error: string }> = [];
  private index = 0;
  private socket: Socket | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly candidates: readonly IpAddress[],
    private readonly port: number,
    private readonly timeoutMs: number,
    private readonly cancel: DialCancel | undefined,
    private readonly done: (err: DialError | null, conn: PinnedConnection | null) => void,
    private readonly readInto: OnReadOpts | undefined,
  ) {}

  /** Tries the next candidate, or gives up. */
  next(): void {
    const ip = this.candidates[this.index];
    if (ip === undefined || this.cancel?.aborted) return this.fail();
    let socket: Socket;
    try {
      const { readInto } = this;
      socket = connect(connectOptions(ip, this.port, readInto));
      // Paused before it connects: no read starts at 'connect' (an `onread` socket reads, and
      // calls back, as soon as it may).
      if (readInto !== undefined) socket.pause();
    } catch (err) {
      // Refused before any socket exists (a port net.connect will not take): this attempt failed.
      this.attempts.push({ address: ip.text, error: (err as NodeJS.ErrnoException).code ?? String(err) });
      this.index++;
      return this.next();
    }
    this.socket = socket;
    this.timer = setTimeout(this.onTimeout, this.timeoutMs);
    socket.once('connect', this.onConnect);
    socket.once('error', this.onError);
  }

  private readonly onConnect = (): void => {
    const socket = this.socket as Socket;
    const address = this.candidates[this.index] as IpAddress;
    this.settle();
    socket.removeListener('error', this.onError);
    if (this.cancel?.aborted) {
      socket.destroy();
      return this.fail();
    }
    this.done(null, { socket, address });
  };

  private readonly onError = (err: NodeJS.ErrnoException): void => this.attemptFailed(err.code ?? err.message);

  private readonly onTimeout = (): void => this.attemptFailed('ETIMEDOUT');

  private attemptFailed(error: string): void {
    const socket = this.socket as Socket;
    this.settle();
    socket.removeListener('connect', this.onConnect);
    socket.removeListener('error', this.onError);
    // A late error from the abandoned socket must not reach the process as an uncaught one.
    socket.on('error', ignore);
    socket.destroy();
    this.attempts.push({ address: (this.candidates[this.index] as IpAddress).text, error });
    this.index++;
    this.next();
  }

  private settle(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.socket = null;
  }

  private fail(): void {
    const attempts = this.attempts;
    if (this.cancel?.aborted) attempts.push({ address: '-', error: 'aborted' });
    const allTimeouts = attempts.length > 0 && attempts.every((a) => a.error === 'ETIMEDOUT');
    this.done(new DialError(allTimeouts ? 'timeout' : 'unreachable', attempts), null);
  }
}

function ignore(): void {}

/**
 * What `net.connect` gets: the target, and the four options net.Socket's constructor sets on its
 * copy of them (`{ ...options }`, then `allowHalfOpen`, `emitClose`, `autoDestroy`,
 * `decodeStrings`), given here with the values it sets. Why: in Node 20's V8, adding a property to
 * a spread copy of a non-empty object builds a new hidden class each time, so every socket built
 * that way added 1.0–1.4 KB of maps to the old generation and 270 bytes more that scavenges
 * copied there (`new net.Socket({ readable: true })` at a steady rate, `--trace-gc-nvp`). With
 * the keys present the constructor only overwrites them. (Node builds accepted sockets the same
 * way; those the proxy does not construct.)
 */
export function connectOptions(ip: IpAddress, port: number, readInto: OnReadOpts | undefined): NetConnectOpts {
  // Built, then returned: as a literal in the return, TypeScript would refuse the three stream
  // options that `NetConnectOpts` does not list.
  const options = {
    host: ip.text,
    port,
    family: ip.family,
    noDelay: true,
    onread: readInto,
    // What the constructor sets (net.js), so it has nothing to add.
    allowHalfOpen: false,
    emitClose: false,
    autoDestroy: true,
    decodeStrings: false,
  };
  return options;
}
