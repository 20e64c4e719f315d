/**
 * Globs over tool names and client identities (policy.md "Globs"): `*` any run of characters,
 * `?` one character, everything else literal; case-sensitive and anchored. A subject that is
 * null (no attribution) is matched only by a glob made of stars alone.
 */
export type GlobMatcher = (subject: string | null) => boolean;

const MATCH_ALL: GlobMatcher = () => true;

export function isMatchAll(glob: string): boolean {
  return /^\*+$/.test(glob);
}

/** Whether `glob` has no wildcard at all (it names exactly one subject). */
export function isLiteralGlob(glob: string): boolean {
  return !/[*?]/.test(glob);
}

export function compileGlob(glob: string): GlobMatcher {
  if (isMatchAll(glob)) return MATCH_ALL;
  if (isLiteralGlob(glob)) return (subject) => subject === glob;
  // The common shapes `read_*`, `*_file`, `*fetch*` (one literal and stars, no `?`) without a
  // regular expression: sequence clauses test them against every call of a history.
  const literal = /^(\*?)([^*?]+)(\*?)$/.exec(glob);
  if (literal) {
    const [, lead, text, trail] = literal as unknown as [string, string, string, string];
    if (lead && trail) return (subject) => subject !== null && subject.includes(text);
    if (trail) return (subject) => subject !== null && subject.startsWith(text);
    return (subject) => subject !== null && subject.endsWith(text);
  }
  const source = glob
    .split('')
    .map((ch) => (ch === '*' ? '.*' : ch === '?' ? '.' : ch.replace(/[\\^$.|+?*()[\]{}/]/g, '\\$&')))
    .join('');
  // 's' lets '.' cross line breaks, 'u' makes '?' one code point rather than one UTF-16 unit.
  const re = new RegExp(`^${source}$`, 'su');
  return (subject) => subject !== null && re.test(subject);
}
