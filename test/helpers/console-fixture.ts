/** A proxy with an admin listener, viewer and developer tokens, and a loopback upstream, for the console's browser tests. */
import { ADMIN_WITH_TOKENS, DEVELOPER_TOKEN, VIEWER_TOKEN } from './admin.js';
import { startTestProxy } from './proxy.js';
import type { TestProxy } from './proxy.js';
import { getRequest, rawRequest } from './raw.js';
import { startUpstream } from './upstream.js';
import type { TestUpstream } from './upstream.js';

export const VIEWER = VIEWER_TOKEN;
export const DEVELOPER = DEVELOPER_TOKEN;

export interface ConsoleFixture {
  readonly proxy: TestProxy;
  readonly upstream: TestUpstream;
  /** http://127.0.0.1:PORT (the admin listener). */
  readonly admin: string;
  /** One plain-HTTP call through the proxy to the upstream, as `tool` (none: unattributed). */
  call(tool: string | null, path?: string): Promise<number>;
}

export async function consoleFixture(
  t: { teardown(fn: () => Promise<void>): void },
  policy: string,
  options: { tokens?: boolean } = {},
): Promise<ConsoleFixture> {
  const upstream = await startUpstream();
  const tokens = options.tokens ?? true;
  const proxy = await startTestProxy({
    policy,
    config: tokens ? ADMIN_WITH_TOKENS : 'admin:\n  listen: 127.0.0.1:0',
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
