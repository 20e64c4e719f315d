/**
 * SHA-256 as the configuration uses it: proxy users and admin tokens are stored as hex digests,
 * policy files are identified by the digest of their bytes. Secrets are compared in constant
 * time, so the time a check takes says nothing about how close a guess was.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

export function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Constant-time equality of two hex digests (false for empty or differently sized ones). */
export function digestsEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}
