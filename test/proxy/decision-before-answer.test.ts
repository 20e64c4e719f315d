/**
 * The contract's order, through a real process writing its events to a file: a client never
 * hears of a call (a `200`) before the call's decision line is written, also when many tunnels
 * are dialled in one event-loop turn and their lines go out in one write.
 */
import { spawn } from 'node:child_process';
import { openSync, readFileSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { startUpstream } from '../helpers/upstream.js';

t.test('each 200 comes after the decision lines of every tunnel answered so far', async (t) => {
  const upstream = await startUpstream();
  t.teardown(() => upstream.close());
  const dir = await mkdtemp(join(tmpdir(), 'mep-order-'));
  await writeFile(join(dir, 'policy.yaml'), 'version: 1\ndefault_verdict: allow\n');
  await writeFile(
    join(dir, 'proxy.yaml'),
    'listen: 127.0.0.1:0\npolicy: policy.yaml\nadmin: {listen: "off"}\nbaseline: {allow_cidrs: [127.0.0.0/8]}\n',
  );
  const log = join(dir, 'events.log');
  const child = spawn(process.execPath, ['dist/src/cli.js', 'serve', '--config', join(dir, 'proxy.yaml')], {
    stdio: ['ignore', openSync(log, 'w'), 'pipe'],
  });
  t.teardown(() => void child.kill('SIGKILL'));
  // Whole lines only: a batch being written as the file is read can show a partial last line
  // (the lines this test counts were written, whole, before their 200).
  const lines = () => {
    const text = readFileSync(log, 'utf8');
    return text
      .slice(0, text.lastIndexOf('\n') + 1)
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  };
  let port = 0;
  for (let i = 0; i < 250 && port === 0; i++) {
    port = (lines().find((e) => e.event === 'listening' && e.listener === 'proxy')?.port as number | undefined) ?? 0;
    if (port === 0) await new Promise((r) => setTimeout(r, 20));
  }
  t.ok(port > 0, 'listening');

  for (let round = 0; round < 3; round++) {
    let answered = 0;
    const seen: number[] = [];
    await Promise.all(
      Array.from(
        { length: 30 },
        () =>
          new Promise<void>((resolve, reject) => {
            const s = connect({ host: '127.0.0.1', port });
            s.on('error', reject);
            s.once('data', (d: Buffer) => {
              if (!d.toString('latin1').startsWith('HTTP/1.1 200')) return reject(new Error(d.toString('latin1')));
              answered++;
              // Read at the moment the answer arrived: every answered tunnel's decision must be in the file already.
              seen.push(lines().filter((e) => e.event === 'egress.decision' && e.method === 'CONNECT').length - answered);
              s.destroy();
              resolve();
            });
            s.write(`CONNECT 127.0.0.1:${upstream.port} HTTP/1.1\r\nHost: 127.0.0.1:${upstream.port}\r\n\r\n`);
          }),
      ),
    );
    t.ok(
      seen.every((extra) => extra >= round * 30),
      `round ${round}: no 200 before its decision line (decision lines minus answers: ${seen.join(',')})`,
    );
  }
});
