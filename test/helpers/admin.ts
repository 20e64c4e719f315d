/** Calls a test proxy's admin API with fetch: status, text, parsed JSON (or null), headers. */
import type { TestProxy } from './proxy.js';

export async function api(proxy: TestProxy, method: string, path: string, options: { token?: string; body?: unknown; raw?: string; type?: string } = {}) {
  const admin = proxy.running.admin?.server.address() as { port: number };
  const headers: Record<string, string> = {};
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  let body: string | undefined;
  if (options.raw !== undefined || options.body !== undefined) {
    headers['content-type'] = options.type ?? 'application/json';
    body = options.raw ?? JSON.stringify(options.body);
  }
  const res = await fetch(`http://127.0.0.1:${admin.port}${path}`, { method, headers, body });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = null;
  }
  return { status: res.status, text, json, headers: res.headers };
}
