/** `mcp-egress-proxy serve` as a real child process (the built CLI), its event lines parsed as they come. */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Served {
  child: ChildProcess;
  lines: Array<Record<string, unknown>>;
  stderr: () => string;
  exit: Promise<number | null>;
  /** Ends the process if it is still running (a test's teardown: a failed test leaves none behind). */
  kill(): void;
  waitFor(pred: (e: Record<string, unknown>) => boolean, ms?: number): Promise<Record<string, unknown>>;
}

export function serve(args: string[], env: Record<string, string> = {}): Served {
  const child = spawn(process.execPath, ['dist/src/cli.js', 'serve', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Array<Record<string, unknown>> = [];
  let buffer = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => {
    buffer += d.toString();
    let i;
    while ((i = buffer.indexOf('\n')) !== -1) {
      lines.push(JSON.parse(buffer.slice(0, i)));
      buffer = buffer.slice(i + 1);
    }
  });
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    child,
    lines,
    stderr: () => err,
    exit,
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
    async waitFor(pred, ms = 5000) {
      const deadline = Date.now() + ms;
      while (Date.now() < deadline) {
        const found = lines.find(pred);
        if (found) return found;
        await new Promise((r) => setTimeout(r, 20));
      }
      throw new Error(`timed out; saw ${JSON.stringify(lines)} ${err}`);
    },
  };
}

export async function files(policy: string, config: string): Promise<{ dir: string; policy: string; config: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'mep-serve-'));
  await writeFile(join(dir, 'policy.yaml'), policy);
  await writeFile(join(dir, 'proxy.yaml'), config);
  return { dir, policy: join(dir, 'policy.yaml'), config: join(dir, 'proxy.yaml') };
}
