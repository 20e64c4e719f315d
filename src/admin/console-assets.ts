/**
 * The browser console's static files on the admin listener (interface.md "The console").
 *
 * Threat: the console runs in an operator's browser holding an admin token, so what it loads is
 * what that token does. A page of another site may frame it (clickjacking a "delete rule"), a
 * request path may try to walk out of the assets (`..`, `%2e%2e`, `\`) to any file the proxy can
 * read, and an injected string (a tool name, a host, a rule label: all chosen by the guarded
 * server or a policy author) must never run as script. So: a fixed list of exact paths, read
 * once from the assets built into the package (`dist/console`, written by `npm run build`), no
 * file-system lookup derived from the request, GET and HEAD only; every answer under
 * `/console` carries a strict Content-Security-Policy (no inline script or style, nothing from
 * elsewhere, no framing), `nosniff` and `no-referrer`. The files themselves hold no secret and
 * need no token; every API call the page makes does (roles stay the API's). The admin API's
 * Host and Origin checks run before this (server.ts), so a rebinding page cannot load it either.
 */
import { existsSync, readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const CONSOLE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** Headers on every answer under /console, assets and errors alike. */
export const CONSOLE_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': CONSOLE_CSP,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'cache-control': 'no-store',
};

/** URL path → built file and its type. Nothing else under /console/ exists. */
const ASSETS: Readonly<Record<string, { file: string; type: string }>> = {
  '/console/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/console/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/console/console.css': { file: 'console.css', type: 'text/css; charset=utf-8' },
  '/console/favicon.svg': { file: 'favicon.svg', type: 'image/svg+xml' },
};

/** The built console (`dist/console` of the package this module belongs to), from src/ (tests) or dist/src/. */
export function builtConsoleDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json'))) return join(dir, 'dist', 'console');
    dir = dirname(dir);
  }
  return join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'console');
}

/** Whether the console answers for this raw request path (everything at or below /console). */
export function isConsolePath(path: string): boolean {
  return path === '/console' || path.startsWith('/console/');
}

export class ConsoleAssets {
  private files: Map<string, Buffer> | null = null;

  constructor(private readonly dir: string = builtConsoleDir()) {}

  /** Read once, on the first request: a missing build is a clear 503, not a crash at start. */
  private load(): Map<string, Buffer> | null {
    if (this.files) return this.files;
    const files = new Map<string, Buffer>();
    for (const [path, asset] of Object.entries(ASSETS)) {
      try {
        files.set(path, readFileSync(join(this.dir, asset.file)));
      } catch {
        return null;
      }
    }
    this.files = files;
    return files;
  }

  /** Answers a request whose raw path `isConsolePath` (matched as sent: no decoding, no normalising). */
  serve(req: IncomingMessage, res: ServerResponse, path: string): void {
    for (const [k, v] of Object.entries(CONSOLE_HEADERS)) res.setHeader(k, v);
    if (path === '/console') {
      res.writeHead(308, { location: '/console/', 'content-length': 0 }).end();
      return;
    }
    const asset = ASSETS[path];
    if (!asset || !Object.hasOwn(ASSETS, path)) return this.error(res, 404, 'not_found', `no console file ${path.slice(0, 200)}`);
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      return this.error(res, 405, 'method_not_allowed', `${req.method} is not allowed on ${path}`);
    }
    const files = this.load();
    const body = files?.get(path);
    if (!body) return this.error(res, 503, 'console_not_built', `the console's files are missing from ${this.dir}: run \`npm run build\``);
    res.writeHead(200, { 'content-type': asset.type, 'content-length': body.length });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  private error(res: ServerResponse, status: number, code: string, message: string): void {
    const text = JSON.stringify({ error: { code, message } });
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }
}
