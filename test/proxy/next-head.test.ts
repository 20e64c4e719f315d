/**
 * Red-team F4: on a kept-alive connection every head has `header_timeout_ms`, counted from the
 * previous answer's end; a second head trickled a byte at a time does not hold the slot longer.
 */
import { connect } from 'node:net';
import t from 'tap';
import { proxyWithUpstream } from '../helpers/proxy.js';

const HEADER_TIMEOUT_MS = 2000;

t.test('a trickled second head on a kept-alive connection is cut at the header timeout', async (t) => {
  const { proxy, target } = await proxyWithUpstream(t, {
    policy: 'version: 1\ndefault_verdict: allow\n',
    config: `limits: {header_timeout_ms: ${HEADER_TIMEOUT_MS}}`,
  });
  const socket = connect({ host: '127.0.0.1', port: proxy.port });
  socket.on('error', () => {});
  let data = '';
  let answeredAt = 0;
  socket.on('data', (d: Buffer) => {
    data += d.toString('latin1');
    if (answeredAt === 0 && /"url":"\/first"/.test(data)) answeredAt = performance.now();
  });
  const closed = new Promise<number>((resolve) => socket.on('close', () => resolve(performance.now())));
  socket.write(`GET http://${target}/first HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  while (answeredAt === 0) await new Promise((r) => setTimeout(r, 10));
  const second = `GET http://${target}/second HTTP/1.1\r\nHost: ${target}\r\nx-pad: ${'a'.repeat(200)}\r\n\r\n`;
  let i = 0;
  const trickle = setInterval(() => {
    if (i < second.length - 2 && !socket.destroyed) socket.write(second[i++] as string);
  }, 100);
  const closedAt = await closed;
  clearInterval(trickle);
  const heldMs = closedAt - answeredAt;
  t.ok(heldMs < HEADER_TIMEOUT_MS + 400, `closed ${Math.round(heldMs)} ms after the first answer (limit ${HEADER_TIMEOUT_MS} ms)`);
  t.ok(heldMs > HEADER_TIMEOUT_MS - 200, 'not before the deadline');
  t.match(data, /HTTP\/1\.1 408 [^\r]*\r\n[^]*"code":"request_timeout"/, 'answered 408 request_timeout');
  t.notMatch(data, /"url":"\/second"/, 'the second request was never served');
});
