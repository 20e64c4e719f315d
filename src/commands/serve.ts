import type { CommandIO } from './io.js';
export async function runServe(_opts: { config?: string; listen?: string; adminListen?: string }, io: CommandIO): Promise<number> {
  io.err('serve: not built yet\n');
  return 1;
}
