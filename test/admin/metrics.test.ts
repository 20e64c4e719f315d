import t from 'tap';
import { Metrics } from '../../src/admin/metrics.js';

t.test('closed calls are counted by end reason and kind, and bytes by direction', async (t) => {
  const metrics = new Metrics();
  const observer = metrics.observer();
  observer.closed?.(10, 20, 'client_closed', false);
  observer.closed?.(1, 2, 'client_closed', true);
  observer.closed?.(3, 4, 'client_closed', true);
  observer.closed?.(5, 6, 'idle_timeout', true);
  observer.closed?.(7, 8, 'upstream_closed', false);
  const text = await metrics.registry.metrics();
  t.match(text, /egress_calls_closed_total\{end="client_closed",kind="http"\} 1\n/);
  t.match(text, /egress_calls_closed_total\{end="client_closed",kind="tunnel"\} 2\n/);
  t.match(text, /egress_calls_closed_total\{end="idle_timeout",kind="tunnel"\} 1\n/);
  t.match(text, /egress_calls_closed_total\{end="upstream_closed",kind="http"\} 1\n/);
  t.notMatch(text, /end="idle_timeout",kind="http"/);
  t.match(text, /egress_bytes_total\{direction="up"\} 26\n/);
  t.match(text, /egress_bytes_total\{direction="down"\} 40\n/);
  // Read twice: publishing resets and re-adds, it does not double.
  t.match(await metrics.registry.metrics(), /egress_calls_closed_total\{end="client_closed",kind="tunnel"\} 2\n/);
});
