/**
 * The admin API's read-mostly routes about the proxy itself: `GET /readyz` (no role),
 * `GET /metrics` (no role, Prometheus text), `GET /v1/policy` (viewer: the serving policy with
 * its ETag, which the edit routes take as If-Match), `POST /v1/reload` (developer: reload the
 * policy file now) and `GET /v1/discovered` (viewer: what observe mode saw, as JSON or as a
 * draft policy in YAML). The admin server has checked Host, Origin and the query keys.
 */
import type { Entry, RuleSpec } from '../policy/types.js';
import { draftPolicy } from './draft.js';
import { badRequest } from './http-error.js';
import type { Metrics } from './metrics.js';
import type { RouteContext } from './policy-routes.js';
import type { AdminRuntime } from './runtime.js';

function entryText(e: Entry): string {
  return e.kind === 'cidr' ? e.cidr.text : e.kind === 'host' ? e.host : `*.${e.suffix}`;
}

function ruleJson(r: RuleSpec): Record<string, unknown> {
  return {
    id: r.id,
    label: r.label,
    priority: r.priority,
    stage: r.stage,
    tool_name_glob: r.toolGlob,
    server_glob: r.serverGlob,
    verdict: r.verdict,
    egress: r.lists ? { allow: r.lists.allow.map(entryText), deny: r.lists.deny.map(entryText) } : null,
    ports: r.ports,
    after: r.after
      ? {
          tool_name_glob: r.after.toolGlob,
          server_glob: r.after.serverGlob,
          hosts: r.after.hosts ? r.after.hosts.map(entryText) : null,
          within_seconds: r.after.withinSeconds,
        }
      : null,
  };
}

/** `GET /readyz`: 200 once the proxy listens and a policy is loaded, else 503. */
export function readiness(ctx: RouteContext, running: AdminRuntime): void {
  // Readiness does not depend on the state store: one shared Redis down must not take
  // every replica out of a Service at once (their calls that need no state still work).
  const ready = running.proxy.address !== null && running.store.loaded;
  ctx.send(ready ? 200 : 503, {
    ready,
    policy_generation: running.store.loaded ? running.store.current.generation : null,
    state: running.state.up ? 'up' : 'down',
    state_store: running.state.store,
  });
}

/** `GET /metrics`: the Prometheus registry, with the open registrations counted first. */
export async function metricsText(ctx: RouteContext, running: AdminRuntime, metrics: Metrics): Promise<void> {
  // The open registrations are counted by the store (fleet-wide with Redis); a store that cannot say leaves the gauge as it was.
  try {
    metrics.registered.set(await running.registry.size());
  } catch {
    // state_unavailable: mcp_egress_state_up says so
  }
  ctx.sendAs(200, await metrics.registry.metrics(), metrics.registry.contentType);
}

/** `GET /v1/policy`: the serving policy, its ETag the version the edit routes need in If-Match. */
export function servingPolicy(ctx: RouteContext, running: AdminRuntime): void {
  ctx.requireRole('viewer');
  const g = running.store.current;
  const spec = g.policy.spec;
  ctx.res.setHeader('etag', `"${g.sha256}"`);
  ctx.send(200, {
    generation: g.generation,
    loaded_at: g.loadedAt,
    sha256: g.sha256,
    source: g.source,
    default_verdict: spec.defaultVerdict,
    shadow_mode: spec.shadowMode,
    observe_mode: spec.observeMode,
    egress_rules: g.egressRules,
    skipped_rules: g.skippedRules,
    warnings: g.warnings,
    rules: spec.rules.map(ruleJson),
    last_error: running.store.lastError,
  });
}

/** `POST /v1/reload`: 200 with the new generation, 422 with the error (the old policy keeps serving). */
export async function reloadPolicy(ctx: RouteContext, running: AdminRuntime): Promise<void> {
  ctx.requireRole('developer');
  const ok = await running.reload('api');
  const g = running.store.current;
  if (!ok) return ctx.send(422, { ok: false, generation: g.generation, error: running.store.lastError });
  ctx.send(200, { ok: true, generation: g.generation, sha256: g.sha256, loaded_at: g.loadedAt });
}

/** `GET /v1/discovered?format=json|yaml`: the destinations observe mode recorded, or a draft policy allowing them. */
export async function discovered(ctx: RouteContext, running: AdminRuntime): Promise<void> {
  ctx.requireRole('viewer');
  const destinations = await running.discovered.list();
  const format = ctx.query.get('format') ?? 'json';
  if (format !== 'json' && format !== 'yaml') throw badRequest("format must be 'json' or 'yaml'");
  if (format === 'yaml') return ctx.sendAs(200, draftPolicy(destinations), 'application/yaml');
  ctx.send(200, { destinations });
}
