/**
 * Editing the policy through the admin API (interface.md "Editing the policy through the API"):
 * `POST /v1/rules`, `PUT`/`DELETE /v1/rules/{id}`, `PUT`/`PATCH /v1/policy`. Developer role.
 *
 * Every write names the version it edits (`If-Match: "<sha256>"` from `GET /v1/policy`): no
 * If-Match is a 428 (a client that forgot it would otherwise overwrite someone's change
 * unseen), a stale one a 412. The edit itself is policy-edit.ts (text in, text out), the write
 * and the load policy-writer.ts; this module reads and checks requests and shapes answers.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { applyPolicyEdit } from '../live/policy-edit.js';
import type { PolicyEdit } from '../live/policy-edit.js';
import type { PolicyWriter, Produce, WriteOutcome } from '../live/policy-writer.js';
import { readJsonObject, readText } from './http-body.js';
import { badRequest, HttpError } from './http-error.js';

/** What the admin server gives a route: the caller's token name once its role is checked, and a way to answer. */
export interface RouteContext {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly method: string;
  readonly path: string;
  /** The request target's query (its keys checked by the admin server: known to the route, once each). */
  readonly query: URLSearchParams;
  /** Checks the role (401/403 otherwise) and returns the token's name (null: the tokenless loopback viewer). */
  requireRole(role: 'viewer' | 'developer'): string | null;
  send(status: number, body: unknown, headers?: Record<string, string>): void;
  /** An answer that is not JSON (the metrics text, a YAML draft). */
  sendAs(status: number, text: string, contentType: string): void;
}

const RULE_ID = /^[\x21-\x7e]{1,200}$/;
const IF_MATCH = /^"?([0-9a-fA-F]{64})"?$/;
const YAML_TYPE = /^(application|text)\/(x-)?yaml\b/i;

/** The sha256 an `If-Match` header names; 428 without one, 400 for anything but one quoted digest. */
export function ifMatchDigest(header: string | undefined): string {
  if (header === undefined) {
    throw new HttpError(
      428,
      'precondition_required',
      'a policy write needs If-Match: "<sha256>" (the sha256 and ETag of GET /v1/policy), so that it cannot overwrite a change it has not seen',
    );
  }
  const m = IF_MATCH.exec(header.trim());
  if (!m) throw badRequest('If-Match must be one quoted sha256 (hex), as GET /v1/policy gives it in ETag; * and lists are not accepted');
  return (m[1] as string).toLowerCase();
}

function ruleIdFromPath(path: string): string {
  let id: string;
  try {
    id = decodeURIComponent(path.slice('/v1/rules/'.length));
  } catch {
    throw badRequest('the rule id in the path is not valid percent-encoded UTF-8');
  }
  if (!RULE_ID.test(id)) throw badRequest('a rule id is 1 to 200 visible ASCII characters');
  return id;
}

function editProducer(edit: PolicyEdit): Produce {
  return (current) => {
    const result = applyPolicyEdit(current, edit);
    if (result.ok) return result;
    if (result.code === 'not_found') return { ok: false, status: 404, code: 'not_found', message: result.message };
    return { ok: false, status: 409, code: 'policy_unparsable', message: result.message };
  };
}

function answer(ctx: RouteContext, outcome: WriteOutcome, ruleId: string | null): void {
  if (!outcome.ok) throw new HttpError(outcome.status, outcome.code, outcome.message, { ...(outcome.extra ?? {}) });
  ctx.send(
    200,
    {
      ok: true,
      generation: outcome.generation,
      sha256: outcome.sha256,
      previous_sha256: outcome.previousSha256,
      rule_id: ruleId,
      written: outcome.written,
      warnings: outcome.warnings,
    },
    { etag: `"${outcome.sha256}"` },
  );
}

/** Handles the edit routes; false when `ctx` is not one of them. */
export async function handlePolicyRoute(ctx: RouteContext, writer: Pick<PolicyWriter, 'write'>): Promise<boolean> {
  const { method, path, req } = ctx;
  const isRules = path === '/v1/rules';
  const isRule = path.startsWith('/v1/rules/');
  const isPolicy = path === '/v1/policy' && (method === 'PUT' || method === 'PATCH');
  if (!(isRules && method === 'POST') && !(isRule && (method === 'PUT' || method === 'DELETE')) && !isPolicy) return false;

  const who = ctx.requireRole('developer') ?? 'anonymous';
  const ruleId = isRule ? ruleIdFromPath(path) : null;
  const ifMatch = ifMatchDigest(req.headers['if-match']);
  const route = isRule ? `${method} /v1/rules/{id}` : `${method} ${path}`;

  if (isPolicy && method === 'PUT') {
    const text = await readText(req, YAML_TYPE, 'the policy as YAML text (content-type: application/yaml)');
    const outcome = await writer.write({ ifMatch, who, route, ruleId: null, produce: () => ({ ok: true, text }) });
    answer(ctx, outcome, null);
    return true;
  }
  const body = method === 'DELETE' ? {} : await readJsonObject(req);
  let edit: PolicyEdit;
  let id: string | null = ruleId;
  if (isPolicy) {
    const allowed = ['default_verdict', 'shadow_mode', 'observe_mode'];
    for (const key of Object.keys(body))
      if (!allowed.includes(key)) throw badRequest(`unknown field '${key.slice(0, 64)}' (accepted: ${allowed.join(', ')})`);
    if (Object.keys(body).length === 0) throw badRequest(`nothing to change: give one or more of ${allowed.join(', ')}`);
    if (body.default_verdict !== undefined && body.default_verdict !== 'allow' && body.default_verdict !== 'deny')
      throw badRequest("default_verdict must be 'allow' or 'deny'");
    for (const key of ['shadow_mode', 'observe_mode'])
      if (body[key] !== undefined && typeof body[key] !== 'boolean') throw badRequest(`${key} must be true or false`);
    edit = { kind: 'settings', settings: body };
  } else if (method === 'POST') {
    if (typeof body.id !== 'string' || !RULE_ID.test(body.id)) throw badRequest('id is required: 1 to 200 visible ASCII characters');
    id = body.id;
    edit = { kind: 'add_rule', rule: body };
  } else if (method === 'PUT') {
    if (body.id !== undefined && body.id !== ruleId) throw badRequest(`the body's id must be the path's (${ruleId}), or absent`);
    edit = { kind: 'replace_rule', id: ruleId as string, rule: body };
  } else {
    edit = { kind: 'delete_rule', id: ruleId as string };
  }
  answer(ctx, await writer.write({ ifMatch, who, route, ruleId: id, produce: editProducer(edit) }), id);
  return true;
}
