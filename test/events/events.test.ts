import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { closeSync, constants, openSync, readFileSync } from 'node:fs';
import t from 'tap';
import { BatchedDestination, createEventDestination, DEFER_MS, FdWriter } from '../../src/events/event-destination.js';
import { closedLine, createEventSink, createLogger, decisionLine, millisText, parseDecisionLine } from '../../src/events/events.js';
import type { ClosedEvent, DecisionEvent } from '../../src/events/events.js';
import type { Decision } from '../../src/policy/types.js';

/** What pino itself writes for the same fields (the reference the hand-written lines must equal). */
function viaPino(fields: Record<string, unknown>, msg: string): string {
  const lines: string[] = [];
  const logger = createLogger('info', { write: (s: string) => void lines.push(s) });
  logger.info(fields, msg);
  return lines[0] as string;
}

const withoutTime = (line: string) => line.replace(/"time":"[^"]+"/, '"time":"T"');

const allow: Decision = {
  verdict: 'allow',
  dispatched: true,
  shadow: false,
  reason: 'default',
  rule: null,
  after: null,
  addresses: ['93.184.216.34', '2606:4700::1111'],
  trace: [],
  uncovered: false,
};
const shadowed: Decision = {
  verdict: 'deny',
  dispatched: true,
  shadow: true,
  reason: 'rule',
  rule: { id: 'no-"quotes"\\', label: 'line\nbreak \u2028 é', priority: 7 },
  after: { call_id: 'c"\u0001', tool: 'read_\u2028file', server: 'srv', session_id: null, host: null, seconds_ago: 1.25 },
  addresses: [],
  trace: [],
  uncovered: false,
};
const baseline: Decision = {
  verdict: 'deny',
  dispatched: false,
  shadow: false,
  reason: 'ssrf_baseline',
  rule: null,
  after: null,
  addresses: ['169.254.169.254'],
  trace: [],
  uncovered: false,
  address_class: 'link_local',
};

const events: DecisionEvent[] = [
  {
    conn_id: 'a-1',
    policy_generation: 3,
    decision: allow,
    tool: 'fetch',
    call_id: 'c"1',
    session_id: null,
    server: '127.0.0.1',
    host: 'example.com',
    port: 443,
    method: 'CONNECT',
    pinned_address: '93.184.216.34',
    policy_digest: '0123456789ab',
  },
  {
    conn_id: 'a-2',
    policy_generation: 1,
    decision: shadowed,
    tool: null,
    call_id: null,
    session_id: 's\u0001',
    server: 'agent',
    host: 'xn--bcher-kva.example',
    port: 80,
    method: 'GET',
    pinned_address: null,
    policy_digest: 'abcdefabcdef',
  },
  {
    conn_id: 'a-3',
    policy_generation: 9,
    decision: baseline,
    tool: 't',
    call_id: null,
    session_id: null,
    server: '::1',
    host: '169.254.169.254',
    port: 80,
    method: 'GET',
    pinned_address: null,
    policy_digest: 'ffffffffffff',
    detail: 'x',
  },
];

/** Each event's message, written out here (not taken from the code under test). */
const EXPECTED_MSG: Record<string, string> = {
  'a-1': 'allow example.com:443 (the default verdict)',
  'a-2': '[shadow] would deny xn--bcher-kva.example:80 (rule no-"quotes"\\ after read_\u2028file 1.25 s ago)',
  'a-3': 'deny 169.254.169.254:80 (ssrf_baseline)',
};

t.test('decision lines are what pino would write, field for field and in order', async (t) => {
  for (const e of events) {
    const lines: string[] = [];
    const sink = createEventSink(createLogger('info', { write: (s: string) => void lines.push(s) }));
    sink.decision(e);
    const d = e.decision;
    const reference = viaPino(
      {
        event: 'egress.decision',
        conn_id: e.conn_id,
        policy_generation: e.policy_generation,
        verdict: d.verdict,
        dispatched: d.dispatched,
        shadow: d.shadow,
        reason: d.reason,
        rule: d.rule,
        tool: e.tool,
        call_id: e.call_id,
        session_id: e.session_id,
        server: e.server,
        host: e.host,
        port: e.port,
        method: e.method,
        addresses: d.addresses,
        pinned_address: e.pinned_address,
        address_class: d.address_class ?? null,
        after: d.after,
        policy_digest: e.policy_digest,
        ...(e.detail ? { detail: e.detail } : {}),
      },
      EXPECTED_MSG[e.conn_id] as string,
    );
    t.equal(withoutTime(lines[0] as string), withoutTime(reference), e.conn_id);
    t.equal(withoutTime(decisionLine(e)), withoutTime(reference));
  }
  t.match(JSON.parse(decisionLine(events[1] as DecisionEvent)).msg, /^\[shadow\] would deny xn--bcher-kva\.example:80 \(rule no-/);
});

t.test('a decision line reads back as the event it was written from (the feed keeps lines only)', async (t) => {
  for (const e of events) {
    // What a line does not carry: the trace, and observe mode's `uncovered`.
    const expected: DecisionEvent = { ...e, decision: { ...e.decision, trace: [], uncovered: false } };
    t.same(parseDecisionLine(decisionLine(e)), expected, e.conn_id);
    t.strictSame(parseDecisionLine(decisionLine(e)), expected, `${e.conn_id}: no field more or less`);
  }
});

t.test('a duration is written as String (and JSON) would write it', async (t) => {
  let differ = 0;
  let checked = 0;
  const check = (ms: number) => {
    checked++;
    if (millisText(ms) !== String(ms)) differ++;
  };
  // Every duration up to 20 minutes at microsecond resolution would take a while: every
  // microsecond of the first 3 seconds, then strides and random ones up to years.
  for (let us = 0; us <= 3_000_000; us++) check(us / 1000);
  for (let us = 3_000_000; us < 3e12; us = Math.floor(us * 1.0007) + 1) check(us / 1000);
  let seed = 11;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let i = 0; i < 200_000; i++) check(Math.round(next() * 10 ** Math.floor(next() * 15)) / 1000);
  // Not whole microseconds, negative, huge, not finite: String's own text.
  for (const ms of [1.2345, 0.0001, -1.5, -0, 1e300, 2 ** 60, Number.NaN, Infinity, 0.1 + 0.2]) check(ms);
  t.equal(differ, 0, `${checked} durations`);
});

t.test('closed lines are what pino would write', async (t) => {
  const e: ClosedEvent = { conn_id: 'z-9', bytes_up: 12, bytes_down: 345678, duration_ms: 1.25, end: 'idle_timeout' };
  t.equal(withoutTime(closedLine(e)), withoutTime(viaPino({ event: 'egress.closed', ...e }, 'closed z-9 (idle_timeout)')));
});

t.test('below the info level no decision or closed line is written', async (t) => {
  const lines: string[] = [];
  const sink = createEventSink(createLogger('warn', { write: (s: string) => void lines.push(s) }));
  sink.decision(events[0] as DecisionEvent);
  sink.closed({ conn_id: 'x', bytes_up: 0, bytes_down: 0, duration_ms: 0, end: 'error' });
  t.same(lines, []);
});

t.test('the batched destination: order, tickets, the deferral limit, size, flush', async (t) => {
  const writes: string[] = [];
  const dest = new BatchedDestination({ write: (s: string) => void writes.push(s) });
  t.teardown(() => dest.close());
  const a = dest.defer('a\n');
  const b = dest.defer('b\n');
  t.same(writes, [], 'deferred lines wait');
  await new Promise((r) => setImmediate(r));
  t.same(writes, [], 'past the end of the turn too');
  dest.ensureWritten(b);
  t.same(writes, ['a\nb\n'], 'one write for the batch when a line of it must be out');
  dest.ensureWritten(a);
  t.equal(writes.length, 1, 'a ticket already written costs nothing');
  dest.defer('c\n');
  dest.write('d\n');
  t.same(writes, ['a\nb\n', 'c\nd\n'], 'an immediate line goes out after what was pending, in order');
  dest.write('e\n');
  t.same(writes.at(-1), 'e\n');
  const started = Date.now();
  dest.defer('late\n');
  t.not(writes.at(-1), 'late\n', 'not written at once');
  while (writes.at(-1) !== 'late\n' && Date.now() - started < 2_000) await new Promise((r) => setTimeout(r, 2));
  t.equal(writes.at(-1), 'late\n', `a deferred line goes out by itself (within ${DEFER_MS} ms of the batch's first line)`);
  const big = 'x'.repeat(70 * 1024);
  dest.defer(big);
  t.equal(writes.at(-1), big, 'past 64 KiB the batch is written at once');
  dest.defer('f\n');
  dest.flush(() => writes.push('cb'));
  t.same(writes.slice(-2), ['f\n', 'cb']);
  await new Promise((r) => setTimeout(r, DEFER_MS + 10));
  t.equal(writes.at(-1), 'cb', 'nothing written twice');
});

t.test('the sink defers only deferred decisions and closed lines', async (t) => {
  const writes: string[] = [];
  const dest = new BatchedDestination({ write: (s: string) => void writes.push(s) });
  t.teardown(() => dest.close());
  const sink = createEventSink(createLogger('info', dest));
  const ticket = sink.deferredDecision(events[0] as DecisionEvent);
  sink.closed({ conn_id: 'a-1', bytes_up: 1, bytes_down: 2, duration_ms: 3, end: 'upstream_closed' });
  t.equal(writes.length, 0);
  sink.decision(events[2] as DecisionEvent);
  t.equal(writes.length, 1);
  t.same(
    (writes[0] as string)
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l).conn_id),
    ['a-1', 'a-1', 'a-3'],
    'the refusal is written at once, after the lines before it',
  );
  sink.ensureWritten(ticket);
  t.equal(writes.length, 1, 'the deferred decision went out with it');
  sink.error({ code: 'dns_error' }, 'x');
  t.equal(writes.length, 2, 'pino lines are written at once');
  const other: string[] = [];
  const plain = createEventSink(createLogger('info', { write: (s: string) => void other.push(s) }));
  t.equal(plain.deferredDecision(events[0] as DecisionEvent), 0);
  t.equal(other.length, 1, 'without a batching destination a deferred decision is written at once');
});

t.test('pending lines are written when the process exits', async (t) => {
  // The built module (npm test builds first): a child process cannot load TypeScript by itself.
  const built = new URL('../../dist/src/events/event-destination.js', import.meta.url).pathname;
  const script = `import { BatchedDestination } from ${JSON.stringify(built)};
    const d = new BatchedDestination({ write: (s) => process.stdout.write(s) });
    d.defer('deferred-1\\n'); d.defer('deferred-2\\n'); process.exit(3);`;
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  t.equal(child.status, 3);
  t.equal(child.stdout, 'deferred-1\ndeferred-2\n');
});

t.test('the event destination: a real file receives every line, in order', async (t) => {
  const dir = t.testdir();
  const file = `${dir}/events.log`;
  const fd = openSync(file, 'a');
  const dest = createEventDestination(fd);
  const sink = createEventSink(createLogger('info', dest));
  for (let i = 0; i < 1000; i++) sink.closed({ conn_id: `c-${i}`, bytes_up: i, bytes_down: 0, duration_ms: 0, end: 'upstream_closed' });
  sink.info({ event: 'x.y', note: 'é ✓ 😀' }, 'multi-byte');
  dest.close();
  closeSync(fd);
  const lines = readFileSync(file, 'utf8').trim().split('\n');
  t.equal(lines.length, 1001);
  t.same(
    lines.slice(0, 1000).map((l) => JSON.parse(l).conn_id),
    Array.from({ length: 1000 }, (_, i) => `c-${i}`),
  );
  t.equal(JSON.parse(lines[1000] as string).note, 'é ✓ 😀');
});

t.test('a full non-blocking pipe is waited for: partial writes go on, EAGAIN loses nothing', async (t) => {
  const dir = t.testdir();
  const fifo = `${dir}/events.fifo`;
  const out = `${dir}/events.out`;
  execFileSync('mkfifo', [fifo]);
  // Read and write ends both ours (O_RDWR opens at once), non-blocking as a piped stdout can be;
  // the reader is another process that starts draining only after the pipe has been full a while.
  const fd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
  const reader = spawn('sh', ['-c', 'exec 3<"$1"; sleep 0.3; cat <&3 >"$2"', 'drain', fifo, out], { stdio: 'ignore' });
  const exited = new Promise<number | null>((resolve) => reader.on('exit', resolve));
  const writer = new FdWriter(fd);
  const line = (i: number) => `${JSON.stringify({ i, pad: 'x'.repeat(200), mb: 'ü✓' })}\n`;
  const started = Date.now();
  // 10,000 lines in batches of 10 and of 400 (92 KB, more than the 64 KiB pipe holds: written
  // in parts): about 2.3 MB in all.
  for (let i = 0; i < 10_000;) {
    let batch = '';
    for (const end = Math.min(10_000, i + (i % 1000 === 0 ? 400 : 10)); i < end; i++) batch += line(i);
    writer.write(batch);
  }
  const waited = Date.now() - started;
  closeSync(fd);
  t.equal(await exited, 0);
  const lines = readFileSync(out, 'utf8').trim().split('\n');
  t.equal(lines.length, 10_000);
  let outOfPlace = 0;
  for (let i = 0; i < lines.length; i++) if (lines[i] !== line(i).trimEnd()) outOfPlace++;
  t.equal(outOfPlace, 0, 'every line whole and in order');
  t.ok(waited >= 250, `the writer waited for the reader (${waited} ms)`);
});

t.test('a reader gone (EPIPE) ends the writing, not the process; other errors are thrown', async (t) => {
  const dir = t.testdir();
  const fifo = `${dir}/gone.fifo`;
  execFileSync('mkfifo', [fifo]);
  const readEnd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  const fd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
  const writer = new FdWriter(fd);
  writer.write('read by nobody\n');
  closeSync(readEnd);
  t.doesNotThrow(() => writer.write('the reader is gone\n'));
  t.doesNotThrow(() => writer.write('and stays gone\n'));
  closeSync(fd);
  // A descriptor no process has (a closed one's number could be reused meanwhile).
  const none = new FdWriter(2 ** 30);
  t.throws(() => none.write('to no descriptor\n'), { code: 'EBADF' });
});

t.test('the time field is the ISO time pino would write, at every millisecond spelling', async (t) => {
  const realNow = Date.now;
  t.teardown(() => {
    Date.now = realNow;
  });
  for (const at of [
    Date.UTC(2026, 10, 22, 11, 59, 59, 0),
    Date.UTC(2026, 10, 22, 11, 59, 59, 7),
    Date.UTC(2026, 10, 22, 11, 59, 59, 45),
    Date.UTC(2026, 10, 22, 11, 59, 59, 999),
    Date.UTC(2026, 10, 22, 12, 0, 0, 1),
  ]) {
    Date.now = () => at;
    const line = JSON.parse(closedLine({ conn_id: 'c', bytes_up: 0, bytes_down: 0, duration_ms: 0, end: 'error' }));
    t.equal(line.time, new Date(at).toISOString(), new Date(at).toISOString());
  }
});
