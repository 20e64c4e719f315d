/**
 * `token --name NAME --role viewer|developer`: a new admin API token, printed once, and the
 * `admin.tokens` entry (its SHA-256) to paste into the proxy config. The proxy stores only the
 * digest, so the token cannot be shown again: whoever runs this keeps it (a secret store, the
 * gateway's environment). 32 random bytes (256 bits), base64url.
 */
import { randomBytes } from 'node:crypto';
import { stringify } from 'yaml';
import { sha256Hex } from '../config/secret-hash.js';
import type { CommandIO } from './io.js';

export const TOKEN_BYTES = 32;
export const ROLES = ['viewer', 'developer'] as const;
export type TokenRole = (typeof ROLES)[number];

/** A token name: what `policy.changed` events and the config show; plain so it needs no quoting. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function newToken(random: (n: number) => Buffer = randomBytes): string {
  return random(TOKEN_BYTES).toString('base64url');
}

export function runToken(options: { name: string; role: string }, io: CommandIO, random?: (n: number) => Buffer): number {
  if (!NAME.test(options.name)) {
    io.err(`error: --name '${options.name}': 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit\n`);
    return 2;
  }
  if (!(ROLES as readonly string[]).includes(options.role)) {
    io.err(`error: --role '${options.role}': one of ${ROLES.join(', ')}\n`);
    return 2;
  }
  const token = newToken(random);
  const entry = stringify([{ name: options.name, sha256: sha256Hex(token), role: options.role }], { lineWidth: 0 });
  io.out(
    [
      '# The token, shown this once (the proxy keeps only its SHA-256). Send it as',
      '# "Authorization: Bearer <token>" to the admin API:',
      token,
      '',
      '# Add this entry under admin.tokens in the proxy config, then restart the proxy:',
      entry.trimEnd(),
      '',
    ].join('\n'),
  );
  return 0;
}
