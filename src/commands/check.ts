/** `check POLICY.yaml...`: validate; problems on stderr as FILE:LINE:COL, a summary per valid file on stdout. */
import { formatDiagnostic } from '../config/yaml.js';
import { loadPolicyFile } from '../policy/schema.js';
import type { CommandIO } from './io.js';

export async function runCheck(files: readonly string[], io: CommandIO): Promise<number> {
  let failed = false;
  for (const file of files) {
    const result = await loadPolicyFile(file);
    for (const d of result.diagnostics) io.err(`${formatDiagnostic(d)}\n`);
    if (result.spec) {
      io.out(`${file}: ok: ${result.egressRules} egress rule${result.egressRules === 1 ? '' : 's'}, ${result.skippedRules} skipped\n`);
    } else failed = true;
  }
  return failed ? 1 : 0;
}
