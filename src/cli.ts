#!/usr/bin/env node
/**
 * The `mcp-egress-proxy` executable: `serve`, `check`, `test`, `token` (interface.md "Set-up and commands"),
 * and `wrap` (put an MCP server behind the proxy).
 */
import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError, Option } from 'commander';
import { runCheck } from './commands/check.js';
import { processIO } from './commands/io.js';
import type { CommandIO } from './commands/io.js';
import { runTest, USAGE_ERROR } from './commands/test.js';
import { ROLES, runToken } from './commands/token.js';

/** The package's version, from the nearest package.json above this module (src/ or dist/src/). */
function packageVersion(): string {
  for (let dir = new URL('.', import.meta.url); dir.pathname !== '/'; dir = new URL('..', dir)) {
    try {
      return (JSON.parse(readFileSync(new URL('package.json', dir), 'utf8')) as { version: string }).version;
    } catch {
      // not here; look one level up
    }
  }
  /* c8 ignore next */
  return 'unknown';
}

export async function main(argv: readonly string[], io: CommandIO = processIO): Promise<number> {
  // wrap's arguments after `--` belong to the wrapped command: commander must not parse them.
  if (argv[0] === 'wrap') {
    const { runWrap } = await import('./commands/wrap.js');
    return runWrap(argv.slice(1), io);
  }
  let exitCode = 0;
  const program = new Command('mcp-egress-proxy')
    .description('Forward egress proxy for MCP tool servers')
    .version(packageVersion())
    .exitOverride()
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .showHelpAfterError();

  program
    .command('check')
    .description('validate policy files; problems go to stderr as FILE:LINE:COL')
    .argument('<policy...>', 'policy files')
    .action(async (files: string[]) => {
      exitCode = await runCheck(files, io);
    });

  program
    .command('test')
    .description('print the decision the proxy would make for one call, without sending traffic')
    .argument('<policy>', 'policy file')
    .argument('<destination>', 'a URL (https://h/ is port 443) or host:port')
    .option('--tool <name>', 'tool name (none: an unattributed call)')
    .option('--server <id>', 'client identity')
    .option('--config <file>', 'proxy config: DNS servers and baseline exemptions')
    .option(
      '--resolve <host=ip,...>',
      'answer a name without DNS (repeatable)',
      (v: string, prev: string[]) => [...prev, v],
      [] as string[],
    )
    .option('--session <id>', "the call's session id (its history's key)")
    .option('--call-id <id>', "the call's id (a call is never its own earlier call)")
    .option(
      '--earlier <tool=T,seconds_ago=N,...>',
      'an earlier call in the history: tool=T,seconds_ago=N[,server=S][,host=H][,address=IP][,call_id=C][,refused] (repeatable)',
      (v: string, prev: string[]) => [...prev, v],
      [] as string[],
    )
    .action(
      async (
        policy: string,
        destination: string,
        opts: { tool?: string; server?: string; config?: string; resolve: string[]; session?: string; callId?: string; earlier: string[] },
      ) => {
        exitCode = await runTest(policy, destination, opts, io);
      },
    );

  program
    .command('token')
    .description('make a new admin API token: prints it once, and the admin.tokens entry (its sha256) for the proxy config')
    .requiredOption('--name <name>', 'a name for the token (shown in events), e.g. gateway or ci')
    .addOption(
      new Option('--role <role>', 'what the token may do: viewer reads, developer also writes and runs dry runs')
        .choices(ROLES)
        .makeOptionMandatory(),
    )
    .action((opts: { name: string; role: string }) => {
      exitCode = runToken(opts, io);
    });

  program
    .command('serve')
    .description('run the proxy')
    .option('--config <file>', 'proxy config (default: $MCP_EGRESS_CONFIG, then config/proxy.yaml)')
    .option('--listen <host:port>', 'proxy listen address (overrides the config)')
    .option('--admin-listen <host:port|off>', 'admin API listen address (overrides the config)')
    .action(async (opts: { config?: string; listen?: string; adminListen?: string }) => {
      const { runServe } = await import('./commands/serve.js');
      exitCode = await runServe(opts, io);
    });

  // Listed for --help only: main() hands `wrap` to runWrap before commander sees it.
  program.command('wrap').description('run an MCP server behind the proxy: wrap [--proxy URL] [--user NAME] -- COMMAND [ARGS...]');

  try {
    await program.parseAsync([...argv], { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here too, with code 0.
      return err.exitCode === 0 ? 0 : USAGE_ERROR;
    }
    throw err;
  }
  return exitCode;
}

/* c8 ignore start */
function invokedDirectly(): boolean {
  try {
    return process.argv[1] !== undefined && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url);
  } catch {
    return false;
  }
}
if (invokedDirectly()) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`fatal: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
/* c8 ignore stop */
