/**
 * `POST /v1/test/replay` (developer): `{policy: YAML text, limit?: 1-1000}` → the last `limit`
 * recorded decisions decided again under the serving policy and the draft (decide/replay.ts).
 * An invalid draft is a 400 `policy_invalid` with every problem at `draft.yaml:LINE:COL`.
 */
import type { DecisionFeed } from '../events/decision-feed.js';
import { FEED_CAPACITY } from '../events/decision-feed.js';
import { formatDiagnostic } from '../config/yaml.js';
import { compilePolicy } from '../policy/compile.js';
import type { Classify } from '../policy/evaluate.js';
import { parsePolicy } from '../policy/schema.js';
import type { PolicyGeneration } from '../live/policy-store.js';
import { replay } from '../decide/replay.js';
import { badRequest, HttpError } from './http-error.js';

export async function replayDraft(
  body: Record<string, unknown>,
  serving: PolicyGeneration,
  feed: Pick<DecisionFeed, 'recent'>,
  classify: Classify,
): Promise<unknown> {
  for (const key of Object.keys(body))
    if (key !== 'policy' && key !== 'limit') throw badRequest(`unknown field '${key.slice(0, 64)}' (accepted: policy, limit)`);
  if (typeof body.policy !== 'string') throw badRequest('policy is required (the draft as YAML text)');
  const limit = body.limit ?? FEED_CAPACITY;
  if (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1 || limit > FEED_CAPACITY)
    throw badRequest(`limit must be an integer from 1 to ${FEED_CAPACITY}`);
  const parsed = parsePolicy('draft.yaml', body.policy);
  if (!parsed.spec) {
    const errors = parsed.diagnostics.filter((d) => d.severity === 'error');
    throw new HttpError(
      400,
      'policy_invalid',
      `the draft policy is not valid (${errors.length} problem${errors.length === 1 ? '' : 's'})`,
      {
        errors: errors.map(formatDiagnostic),
        problems: errors.map((d) => ({ line: d.line, col: d.col, message: d.message })),
      },
    );
  }
  const answer = await replay(serving.policy, compilePolicy(parsed.spec), feed.recent(limit), classify);
  return { live: { generation: serving.generation, sha256: serving.sha256 }, count: answer.calls.length, ...answer };
}
