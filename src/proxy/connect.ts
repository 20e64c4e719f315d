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
import { pinnedDial } from '../net/pinned-dial.js';
import type { PinnedConnection } from '../net/pinned-dial.js';
import { sendRawAnswer } from './answers.js';
import type { Admission, AdmissionResult } from './admission.js';
import { Tunnel } from './tunnel.js';
import type { TunnelOwner } from './tunnel.js';

export class ConnectPath implements TunnelOwner {
  constructor(private readonly admission: Admission) {}

  async serve(requestTarget: string, rawHeaders: readonly string[], client: Socket, head: Buffer): Promise<void> {
    const admission = this.admission;
    client.on('error', destroyOnError);
    const target = parseAuthority(requestTarget, null);
    if ('error' in target) {
      sendRawAnswer(client, admission.badRequest(admission.nextConnId(), `bad CONNECT target: ${target.error}`, null, 'CONNECT'));
      return;
    }
    let result: AdmissionResult;
    try {
      result = await admission.admit(rawHeaders, client.remoteAddress, target, 'CONNECT');
    } catch (err) {
      sendRawAnswer(client, admission.internalError(err, null));
      return;
    }
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
    let conn: PinnedConnection;
    try {
      // A client gone during the dial (a reset, or shutdown) abandons it; read when the dial
      // checks, so no 'close' listener is added and removed on every CONNECT.
      conn = await pinnedDial(a.candidates, a.target.port, admission.config.limits.connectTimeoutMs, {
        get aborted() {
          return client.destroyed;
        },
      });
    } catch (err) {
      admission.releaseTunnel(a.limitKey);
      admission.logDecision(a, null);
      sendRawAnswer(client, admission.dialFailure(a, err));
      admission.closedEvent(a.connId, 0, 0, started, client.destroyed ? 'client_closed' : 'error', true);
      return;
    }
    admission.logDecision(a, conn.address.text);
    const tunnel = new Tunnel(a.connId, a.limitKey, client, conn.socket, started, this);
    admission.active.add(tunnel);
    tunnel.open(head, admission.config.limits.tunnelIdleTimeoutMs);
  }

  /** TunnelOwner: both sockets of a tunnel are closed. */
  tunnelEnded(tunnel: Tunnel): void {
    const admission = this.admission;
    admission.active.delete(tunnel);
    admission.releaseTunnel(tunnel.limitKey);
    const { bytesWritten, bytesRead } = tunnel.upstream;
    admission.closedEvent(tunnel.connId, bytesWritten, bytesRead, tunnel.started, tunnel.end ?? 'client_closed', true);
  }
}

export function destroyOnError(this: Socket): void {
  this.destroy();
}
