/** Admin API requests against a test proxy's admin listener: `api` (token, JSON or raw body) and `adminApi` (also extra headers), tokens for tests. */
import { createHash } from 'node:crypto';
import type { TestProxy } from './proxy.js';

export const sha256 = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');
export const VIEWER_TOKEN = 'viewer-token-0123456789abcdef';
export const DEVELOPER_TOKEN = 'developer-token-0123456789abcdef';

/** The `admin:` config block with a viewer token (name `watcher`) and a developer token (name `alice`). */
export const ADMIN_WITH_TOKENS = `admin:
  listen: 127.0.0.1:0
  tokens:
    - {name: watcher, sha256: ${sha256(VIEWER_TOKEN)}, role: viewer}
    - {name: alice, sha256: ${sha256(DEVELOPER_TOKEN)}, role: developer}`;

export interface ApiAnswer {
  status: number;
  text: string;
  json: any;
  headers: Headers;
}

export function adminPort(proxy: TestProxy): number {
  return (proxy.running.admin?.server.address() as { port: number }).port;
}

export async function adminApi(
  proxy: TestProxy,
  method: string,
  path: string,
  options: { token?: string; body?: unknown; raw?: string; type?: string; headers?: Record<string, string> } = {},
): Promise<ApiAnswer> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  let body: string | undefined;
  if (options.raw !== undefined || options.body !== undefined) {
    headers['content-type'] = options.type ?? 'application/json';
    body = options.raw ?? JSON.stringify(options.body);
  }
  const res = await fetch(`http://127.0.0.1:${adminPort(proxy)}${path}`, { method, headers, body });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = null;
  }
  return { status: res.status, text, json, headers: res.headers };
}

/** Calls a test proxy's admin API with fetch: status, text, parsed JSON (or null), headers. */
export async function api(
  proxy: TestProxy,
  method: string,
  path: string,
  options: { token?: string; body?: unknown; raw?: string; type?: string } = {},
) {
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
