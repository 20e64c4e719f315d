/**
 * Starts a server listening, once: resolves with the bound address, rejects with why it could
 * not listen (in use, not permitted, a bad address, already listening), and either way leaves
 * none of its own listeners on the server. A later 'error' is then an accept failure, for
 * accept.ts's reportAcceptErrors to report; a stale listener here would swallow it unseen.
 */
import type { AddressInfo, Server } from 'node:net';

export function listenOn(server: Server, host: string, port: number): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const onListening = () => {
      server.removeListener('error', onError);
      resolve(server.address() as AddressInfo);
    };
    const onError = (err: Error) => {
      server.removeListener('listening', onListening);
      reject(err);
    };
    server.once('error', onError);
    server.once('listening', onListening);
    try {
      server.listen({ host, port });
    } catch (err) {
      // Thrown before listening started (a bad port, already listening): no event will come.
      server.removeListener('error', onError);
      server.removeListener('listening', onListening);
      reject(err instanceof Error ? err : new Error(String(err)));
    }
  });
}
