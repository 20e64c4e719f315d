/**
 * `wrap [--proxy URL] [--user NAME] [--no-proxy LIST] -- COMMAND [ARGS...]`: runs an MCP server
 * behind the proxy in one line of an MCP client's config. The child gets the preload (NODE_OPTIONS
 * `--import=` with an absolute file URL, so it works from any directory, through `npx`, and for
 * paths with spaces), the proxy variables in both cases, and NO_PROXY; stdio is inherited
 * untouched (it is the MCP transport), the exit code is returned and signals are forwarded.
 *
 * The proxy is `--proxy`, else $MCP_EGRESS_PROXY, else http://127.0.0.1:3128 (what `serve`
 * listens on by default). An inherited HTTPS_PROXY is NOT used: it may name another (corporate)
 * proxy, and traffic would then bypass this one while looking proxied. A password never goes on
 * the command line: `--user NAME` takes it from $MCP_EGRESS_PASSWORD, and a --proxy URL that
 * carries one is refused. Nothing is written to stdout.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { constants } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { CommandIO } from './io.js';

export const DEFAULT_PROXY = 'http://127.0.0.1:3128';
export const PASSWORD_VAR = 'MCP_EGRESS_PASSWORD';
const USAGE_ERROR = 2;
const NOT_FOUND = 127;
const FORWARDED_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'] as const;

export const WRAP_USAGE = `usage: mcp-egress-proxy wrap [--proxy URL] [--user NAME] [--no-proxy LIST] -- COMMAND [ARGS...]

Runs COMMAND (an MCP server) with the Node preload and the proxy variables set, stdio untouched.
  --proxy URL       the egress proxy (default: $MCP_EGRESS_PROXY, then ${DEFAULT_PROXY})
  --user NAME       proxy Basic user; the password is read from $${PASSWORD_VAR}
  --no-proxy LIST   NO_PROXY for the server (default: empty, everything goes through the proxy)
`;

interface WrapOptions {
  proxy: string | undefined;
  user: string | undefined;
  noProxy: string;
  command: string[];
}

/** The options, `help` for -h/--help, or why the arguments are wrong. */
function parseArgs(args: readonly string[]): WrapOptions | { readonly help: true } | { readonly error: string } {
  const options: WrapOptions = { proxy: undefined, user: undefined, noProxy: '', command: [] };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    if (arg === '--') {
      options.command = args.slice(i + 1);
      break;
    }
    if (arg === '-h' || arg === '--help') return { help: true };
    const match = /^--(proxy|user|no-proxy)(?:=(.*))?$/s.exec(arg);
    if (!match) {
      if (arg.startsWith('-')) return { error: `unknown option ${arg}` };
      options.command = args.slice(i);
      break;
    }
    const value = match[2] ?? args[++i];
    if (value === undefined) return { error: `--${match[1]} needs a value` };
    if (match[1] === 'proxy') options.proxy = value;
    else if (match[1] === 'user') options.user = value;
    else options.noProxy = value;
  }
  if (options.command.length === 0) return { error: 'no command to run (put it after --)' };
  return options;
}

/** The proxy URL the child gets, or why not (never echoing a secret). */
function proxyUrl(options: WrapOptions, env: NodeJS.ProcessEnv): URL | string {
  const raw = options.proxy ?? (env.MCP_EGRESS_PROXY?.trim() || DEFAULT_PROXY);
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return 'the proxy is not a valid URL';
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return `the proxy must be an http:// or https:// URL, not ${url.protocol}`;
  if (url.pathname !== '/' || url.search || url.hash) return 'the proxy URL must name only scheme, host and port';
  if (url.password)
    return `the proxy URL carries a password: pass --user NAME and put the password in $${PASSWORD_VAR}, never on the command line`;
  if (options.user !== undefined) {
    const password = env[PASSWORD_VAR];
    if (!password) return `--user needs the password in $${PASSWORD_VAR}`;
    url.username = encodeURIComponent(options.user);
    url.password = encodeURIComponent(password);
  }
  return url;
}

/** The built preload next to this module (dist/src/register), also when run from src/ in tests. */
export function preloadPath(): string | null {
  for (const candidate of ['../register/index.js', '../../dist/src/register/index.js']) {
    const path = fileURLToPath(new URL(candidate, import.meta.url));
    if (existsSync(path)) return path;
  }
  return null;
}

/** NODE_OPTIONS with the preload first: a quoted file URL survives spaces, quotes and backslashes in the path. */
export function nodeOptionsWithPreload(preload: string, existing: string | undefined): string {
  const url = pathToFileURL(preload).href.replace(/\\/g, '\\\\').replace(/"/g, '\\"');
  return [`--import="${url}"`, existing?.trim()].filter(Boolean).join(' ');
}

export function childEnvironment(env: NodeJS.ProcessEnv, proxy: URL, noProxy: string, preload: string): NodeJS.ProcessEnv {
  const child: NodeJS.ProcessEnv = { ...env };
  delete child[PASSWORD_VAR];
  delete child.MCP_EGRESS_PROXY;
  delete child.MCP_EGRESS_ALLOW_DIRECT; // the preload must never run unproxied under wrap
  for (const name of ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy']) child[name] = proxy.href;
  for (const name of ['ALL_PROXY', 'all_proxy', 'MCP_EGRESS_HTTPS_PROXY', 'MCP_EGRESS_HTTP_PROXY', 'MCP_EGRESS_NO_PROXY'])
    delete child[name];
  child.NO_PROXY = noProxy;
  child.no_proxy = noProxy;
  child.NODE_OPTIONS = nodeOptionsWithPreload(preload, env.NODE_OPTIONS);
  return child;
}

export async function runWrap(args: readonly string[], io: CommandIO, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const options = parseArgs(args);
  if ('help' in options) {
    io.err(WRAP_USAGE);
    return 0;
  }
  if ('error' in options) {
    io.err(`mcp-egress-proxy wrap: ${options.error}\n${WRAP_USAGE}`);
    return USAGE_ERROR;
  }
  const proxy = proxyUrl(options, env);
  if (typeof proxy === 'string') {
    io.err(`mcp-egress-proxy wrap: ${proxy}\n`);
    return USAGE_ERROR;
  }
  const preload = preloadPath();
  if (!preload) {
    io.err('mcp-egress-proxy wrap: the preload (dist/src/register/index.js) is missing: run `npm run build`\n');
    return 1;
  }
  const [command, ...commandArgs] = options.command as [string, ...string[]];
  const child = spawn(command, commandArgs, { stdio: 'inherit', env: childEnvironment(env, proxy, options.noProxy, preload) });
  const forward = (signal: NodeJS.Signals) => () => child.kill(signal);
  const handlers = FORWARDED_SIGNALS.map((signal) => [signal, forward(signal)] as const);
  for (const [signal, handler] of handlers) process.on(signal, handler);
  return new Promise<number>((resolve) => {
    const done = (code: number) => {
      for (const [signal, handler] of handlers) process.removeListener(signal, handler);
      resolve(code);
    };
    child.once('error', (err: NodeJS.ErrnoException) => {
      io.err(`mcp-egress-proxy wrap: cannot run ${command}: ${err.code === 'ENOENT' ? 'command not found' : err.message}\n`);
      done(err.code === 'ENOENT' ? NOT_FOUND : 1);
    });
    // Like a shell: a child killed by a signal gives 128 + the signal's number.
    child.once('exit', (code, signal) => done(code ?? 128 + (signal ? (constants.signals[signal] ?? 0) : 0)));
  });
}
