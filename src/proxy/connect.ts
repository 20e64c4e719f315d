/**
 * The CONNECT path, from a complete head to the tunnel's closed event: parse the target,
 * admit the call (admission.ts), take a tunnel slot, dial the vetted candidates only
 * (pinned-dial.ts), then answer `200` and relay (tunnel.ts). A refusal or a failed dial is
 * answered before any `200`, on the raw socket, and the socket is closed.
 *
 * Heads come from connection-start.ts (a connection that opens with CONNECT) or from node:http
 * (a CONNECT later on a kept-alive connection); both land in `serve`.
 */
import type { Socket } from 'node:net';
import { parseAuthority } from '../net/destination.js';
import { dialPinned } from '../net/pinned-dial.js';
import type { DialCancel } from '../net/pinned-dial.js';
import type { MaybePromise } from '../state/types.js';
import { sendRawAnswer } from './answers.js';
import type { Admission, AdmissionResult } from './admission.js';
import { IdleSweep } from './idle-sweep.js';
import { Tunnel, UPSTREAM_READS } from './tunnel.js';
import type { TunnelOwner } from './tunnel.js';

export class ConnectPath implements TunnelOwner {
  /** Closes tunnels idle for `tunnel_idle_timeout_ms`. */
  private readonly idle: IdleSweep<Tunnel>;
  /** Tunnels dialled in this event-loop turn, and what their clients sent after the head: answered together (openDialled). */
  private dialled: Tunnel[] = [];
  private dialledHeads: Buffer[] = [];
  /** The newest decision line's ticket among them. */
  private dialledTicket = 0;

  constructor(private readonly admission: Admission) {
    this.idle = new IdleSweep(admission.config.limits.tunnelIdleTimeoutMs);
  }

  /**
   * Serves one CONNECT. No promise unless the admission needs one (a shared store, a DNS query):
   * an IP literal or a cached name goes from head to dial in one turn.
   */
  serve(requestTarget: string, rawHeaders: readonly string[], client: Socket, head: Buffer): void {
    const admission = this.admission;
    client.on('error', destroyOnError);
    const target = parseAuthority(requestTarget, null);
    if ('error' in target) {
      sendRawAnswer(client, admission.badRequest(admission.nextConnId(), `bad CONNECT target: ${target.error}`, null, 'CONNECT'));
      return;
    }
    let result: MaybePromise<AdmissionResult>;
    try {
      result = admission.admit(rawHeaders, client.remoteAddress, target, 'CONNECT');
    } catch (err) {
      sendRawAnswer(client, admission.internalError(err, null));
      return;
    }
    if (result instanceof Promise)
      result.then(
        (r) => this.admitted(r, client, head),
        (err: unknown) => sendRawAnswer(client, admission.internalError(err, null)),
      );
    else this.admitted(result, client, head);
  }

  /** Decided: answer a refusal, or take a tunnel slot and dial the vetted candidates. */
  private admitted(result: AdmissionResult, client: Socket, head: Buffer): void {
    const admission = this.admission;
    if (!result.ok) {
      sendRawAnswer(client, result.answer);
      return;
    }
    const a = result.admitted;
    const overCap = admission.takeTunnel(a);
    if (overCap) {
      sendRawAnswer(client, overCap);
      return;
    }
    const started = performance.now();
    dialPinned(
      a.candidates,
      a.target.port,
      admission.config.limits.connectTimeoutMs,
      new ClientGone(client),
      (err, conn) => {
        if (err !== null || conn === null) {
          admission.releaseTunnel(a.limitKey);
          admission.logDecision(a, null);
          sendRawAnswer(client, admission.dialFailure(a, err));
          admission.closedEvent(a.connId, 0, 0, started, client.destroyed ? 'client_closed' : 'error', true);
          return;
        }
        // Deferred: the decision lines of every tunnel dialled in this turn go out in one write, before any of their 200s.
        this.dialledTicket = Math.max(this.dialledTicket, admission.logDecision(a, conn.address.text, undefined, true));
        const tunnel = new Tunnel(a.connId, a.limitKey, client, conn.socket, started, this);
        admission.active.add(tunnel);
        if (this.dialled.push(tunnel) === 1) setImmediate(this.openDialled);
        this.dialledHeads.push(head);
      },
      UPSTREAM_READS,
    );
  }

  /**
   * Answers `200` to the tunnels dialled in the last turn, once their decision lines are written
   * (one write for all of them). A tunnel whose client left meanwhile is ended, not opened.
   */
  private readonly openDialled = (): void => {
    // Taken whatever happens: the next dialled tunnel schedules the next batch. (New arrays:
    // emptying these by `length = 0` cost more than allocating two small ones.)
    const tunnels = this.dialled;
    const heads = this.dialledHeads;
    this.dialled = [];
    this.dialledHeads = [];
    this.admission.events.ensureWritten(this.dialledTicket);
    for (let i = 0; i < tunnels.length; i++) {
      const tunnel = tunnels[i] as Tunnel;
      if (tunnel.open(heads[i] as Buffer)) this.idle.add(tunnel);
    }
  };

  /** TunnelOwner: both sockets of a tunnel are closed. */
  tunnelEnded(tunnel: Tunnel): void {
    const admission = this.admission;
    admission.active.delete(tunnel);
    this.idle.delete(tunnel);
    admission.releaseTunnel(tunnel.limitKey);
    const { bytesWritten, bytesRead } = tunnel.upstream;
    admission.closedEvent(tunnel.connId, bytesWritten, bytesRead, tunnel.started, tunnel.end ?? 'client_closed', true);
  }
}

/**
 * A client gone during the dial (a reset, or shutdown) abandons it; read when the dial checks, so
 * no 'close' listener is added and removed on every CONNECT. A class, not an inline getter in
 * `admitted`: that one shared the call's closure context (keeping the whole admitted call reachable
 * as long as the dial's objects are: 28% more bytes promoted per scavenge on S2), and an object
 * literal with an accessor is built through the runtime on every call (~1% of a CONNECT's CPU).
 */
class ClientGone implements DialCancel {
  constructor(private readonly client: Socket) {}
  get aborted(): boolean {
    return this.client.destroyed;
  }
}

export function destroyOnError(this: Socket): void {
  this.destroy();
}
