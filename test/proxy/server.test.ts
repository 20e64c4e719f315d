/**
 * The proxy's listener (src/proxy/server.ts) builds its accepted sockets with full options
 * (src/net/accept.ts) from its first connection on, and serves through them; both listeners
 * survive a failed accept (reportAcceptErrors, hooked in serve.ts) and say when accepting is
 * stuck failing.
 */
import { Socket, createServer } from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import { constants } from 'node:os';
import t from 'tap';
import {
  ACCEPT_ERROR_REPORT_MS,
  ACCEPT_RETRY_GAP_MS,
  ACCEPT_STUCK_MS,
  acceptsWithFullOptions,
  reportAcceptErrors,
} from '../../src/net/accept.js';
import { startTestProxy, startTestProxyFor } from '../helpers/proxy.js';
import { rawRequest } from '../helpers/raw.js';

t.test('the proxy listener accepts with full options once listening', async (t) => {
  const proxy = await startTestProxyFor(t, { policy: 'version: 1\ndefault_verdict: allow\nrules: []\n' });
  t.equal(acceptsWithFullOptions(proxy.running.proxy.server), true);
  const answer = await rawRequest(proxy.port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  t.equal(answer.status, 400, 'a request in origin form through it is answered');
});

/** Makes `server`'s listening handle report an accept failure, as libuv does (a negative errno). */
function failAccept(server: Server, errno: number): void {
  const handle = (server as unknown as { _handle: { onconnection(err: number, client: unknown): void } })._handle;
  handle.onconnection(-errno, undefined);
}

t.test('a listener that fails to accept a connection says so and goes on serving', async (t) => {
  const proxy = await startTestProxyFor(t, {
    policy: 'version: 1\ndefault_verdict: allow\nrules: []\n',
    config: 'admin: {listen: 127.0.0.1:0}',
  });
  const admin = proxy.running.admin;
  if (!admin) throw new Error('no admin listener');
  for (const [listener, server] of [
    ['proxy', proxy.running.proxy.server],
    ['admin', admin.server],
  ] as const) {
    // ENOBUFS under kernel memory pressure: an uncaught 'error' would end the process.
    t.doesNotThrow(() => failAccept(server, constants.errno.ENOBUFS), `${listener}: no uncaught error`);
    t.doesNotThrow(() => failAccept(server, constants.errno.ENOMEM), `${listener}: nor for a second one`);
    const reported = proxy.events('accept_failed').filter((e) => e['listener'] === listener);
    t.equal(reported.length, 1, `${listener}: reported once within ${ACCEPT_ERROR_REPORT_MS} ms`);
    t.match(reported[0], { level: 'warn', code: 'ENOBUFS', not_reported: 0 });
    t.equal(server.listening, true, `${listener}: still listening`);
  }
  const answer = await rawRequest(proxy.port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  t.equal(answer.status, 400, 'the proxy listener still answers');
  const adminPort = (admin.server.address() as AddressInfo).port;
  const health = await rawRequest(adminPort, `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${adminPort}\r\nConnection: close\r\n\r\n`);
  t.equal(health.status, 200, 'the admin listener still answers');
});

t.test('accept failures are reported at most once a period, with the count of the rest', async (t) => {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  const reports: Array<[string | undefined, number]> = [];
  const stuck: number[] = [];
  reportAcceptErrors(server, { report: (err, notReported) => reports.push([err.code, notReported]), stuck: (_e, n) => stuck.push(n) });
  failAccept(server, constants.errno.ENOBUFS);
  failAccept(server, constants.errno.ENOBUFS);
  failAccept(server, constants.errno.ENOMEM);
  t.same(reports, [['ENOBUFS', 0]]);
  // Nothing more fails: the two held back go out a period after the first line, with the last one.
  await new Promise((r) => setTimeout(r, ACCEPT_ERROR_REPORT_MS + 100));
  t.same(reports, [
    ['ENOBUFS', 0],
    ['ENOMEM', 1],
  ]);
  await new Promise((r) => setTimeout(r, ACCEPT_ERROR_REPORT_MS + 50));
  failAccept(server, constants.errno.ENOMEM);
  t.same(reports.at(-1), ['ENOMEM', 0], 'a period later the next failure goes out at once');
  t.same(stuck, [], 'failures with the event loop turning between them are never "stuck"');
});

t.test('accept failures held back are reported when asked, once', async (t) => {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  const reports: Array<[string | undefined, number]> = [];
  const reportHeldBack = reportAcceptErrors(server, { report: (err, n) => reports.push([err.code, n]), stuck: () => {} });
  reportHeldBack();
  t.same(reports, [], 'nothing held back: nothing reported');
  const period = ACCEPT_ERROR_REPORT_MS;
  failAccept(server, constants.errno.ENOBUFS);
  failAccept(server, constants.errno.ENOMEM);
  failAccept(server, constants.errno.ENOMEM);
  await new Promise((r) => setTimeout(r, period / 2));
  reportHeldBack();
  t.same(reports, [
    ['ENOBUFS', 0],
    ['ENOMEM', 1],
  ]);
  // That was a report: the next failure waits a whole period from it, not for the first timer.
  failAccept(server, constants.errno.ENOBUFS);
  await new Promise((r) => setTimeout(r, period * 0.5 + 100));
  t.equal(reports.length, 2, 'not when the first period would have ended');
  await new Promise((r) => setTimeout(r, period * 0.5));
  t.same(reports.at(-1), ['ENOBUFS', 0], 'but a period after the report');
  t.equal(reports.length, 3);
});

t.test('a stopping proxy reports the accept failures it held back', async (t) => {
  const proxy = await startTestProxy({ policy: 'version: 1\ndefault_verdict: allow\nrules: []\n' });
  failAccept(proxy.running.proxy.server, constants.errno.ENOBUFS);
  failAccept(proxy.running.proxy.server, constants.errno.ENOMEM);
  t.equal(proxy.events('accept_failed').length, 1, 'the second is held back for a period');
  await proxy.stop();
  t.match(proxy.events('accept_failed'), [
    { listener: 'proxy', code: 'ENOBUFS', not_reported: 0 },
    { listener: 'proxy', code: 'ENOMEM', not_reported: 0 },
  ]);
});

t.test('accept failures that last ACCEPT_STUCK_MS without the event loop turning are stuck', async (t) => {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  let clock = 0;
  const stuck: Array<[string | undefined, number, number]> = [];
  reportAcceptErrors(server, { report: () => {}, stuck: (err, failures, ms) => stuck.push([err.code, failures, ms]) }, () => clock);
  // libuv's retry loop: failure after failure in one turn, the clock moving on.
  for (; clock < ACCEPT_STUCK_MS; clock += 10) failAccept(server, constants.errno.EMFILE);
  t.same(stuck, [], 'not before ACCEPT_STUCK_MS');
  failAccept(server, constants.errno.EMFILE);
  t.same(stuck, [['EMFILE', ACCEPT_STUCK_MS / 10 + 1, ACCEPT_STUCK_MS]]);

  // Still in one turn: failures with a connection accepted between them are not in a row.
  stuck.length = 0;
  for (let i = 0; i < 30; i++, clock += ACCEPT_STUCK_MS / 10) {
    failAccept(server, constants.errno.ENOBUFS);
    if (i % 5 === 4) server.emit('connection', new Socket());
  }
  t.same(stuck, [], 'a connection accepted between failures starts them again');
  // Nor failures further apart than libuv's retries ever are.
  for (let i = 0; i < 30; i++, clock += ACCEPT_RETRY_GAP_MS + 1) failAccept(server, constants.errno.ENOBUFS);
  t.same(stuck, [], `failures more than ${ACCEPT_RETRY_GAP_MS} ms apart are not in a row`);
  // Nor failures with a turn of the event loop between them (10 ms apart, 1.2 s in all).
  await new Promise((r) => setImmediate(r));
  for (let i = 0; i < (0.6 * ACCEPT_STUCK_MS) / 10; i++, clock += 10) failAccept(server, constants.errno.EMFILE);
  await new Promise((r) => setImmediate(r));
  for (let i = 0; i < (0.6 * ACCEPT_STUCK_MS) / 10; i++, clock += 10) failAccept(server, constants.errno.EMFILE);
  t.same(stuck, [], 'the time before the loop turned does not count');
});
