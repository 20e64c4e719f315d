/** A proxy with an admin listener, viewer and developer tokens, and a loopback upstream, for the console's browser tests. */
import { createHash } from 'node:crypto';
import { startTestProxy } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { getRequest, rawRequest } from '../helpers/raw.js';
import { startUpstream } from '../helpers/upstream.js';
import type { TestUpstream } from '../helpers/upstream.js';

export const VIEWER = 'console-viewer-token-0123456789abcdef';
export const DEVELOPER = 'console-developer-token-0123456789abcdef';
const sha = (s: string) => createHash('sha256').update(s).digest('hex');

export interface ConsoleFixture {
  readonly proxy: TestProxy;
  readonly upstream: TestUpstream;
  /** http://127.0.0.1:PORT (the admin listener). */
  readonly admin: string;
  /** One plain-HTTP call through the proxy to the upstream, as `tool` (none: unattributed). */
  call(tool: string | null, path?: string): Promise<number>;
}

export async function consoleFixture(t: { teardown(fn: () => Promise<void>): void }, policy: string, options: { tokens?: boolean } = {}): Promise<ConsoleFixture> {
  const upstream = await startUpstream();
  const tokens = options.tokens ?? true;
  const proxy = await startTestProxy({
    policy,
    config: tokens
      ? `admin:\n  listen: 127.0.0.1:0\n  tokens:\n    - {name: alice-viewer, sha256: ${sha(VIEWER)}, role: viewer}\n    - {name: bob-developer, sha256: ${sha(DEVELOPER)}, role: developer}`
      : 'admin:\n  listen: 127.0.0.1:0',
  });
  t.teardown(async () => {
    await proxy.stop();
    await upstream.close();
  });
  const port = (proxy.running.admin?.server.address() as { port: number }).port;
  const target = `127.0.0.1:${upstream.port}`;
  return {
    proxy,
    upstream,
    admin: `http://127.0.0.1:${port}`,
    async call(tool, path = '/x') {
      const res = await rawRequest(proxy.port, getRequest(`http://${target}${path}`, target, tool ? `x-mcp-tool: ${tool}\r\n` : ''));
      return res.status;
    },
  };
}
