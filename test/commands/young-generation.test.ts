import { spawnSync } from 'node:child_process';
import t from 'tap';
import { operatorSizedYoungGeneration } from '../../src/commands/young-generation.js';

// The built module (npm test builds first): each case runs in its own process, as V8's flags
// are process-wide and the young generation is sized once per process.
const built = new URL('../../dist/src/commands/young-generation.js', import.meta.url).pathname;

/** Allocates ~64 MB that survives scavenges (as thousands of open sockets do) and prints the semi-space size in MiB. */
function semiSpaceAfterLoad(cap: boolean | 'stopped', nodeArgs: string[] = []): number {
  const script = `import { capYoungGeneration, semiSpaceBytes } from ${JSON.stringify(built)};
    ${cap === true ? 'capYoungGeneration(8 * 1024 * 1024);' : cap === 'stopped' ? 'capYoungGeneration(8 * 1024 * 1024)();' : ''}
    const kept = [];
    let i = 0;
    const step = () => {
      for (let j = 0; j < 20000; j++) kept.push({ i: i++, s: 'x' + i });
      if (kept.length < 1_000_000) setImmediate(step);
      else setImmediate(() => process.stdout.write(String(semiSpaceBytes() / 1048576)));
    };
    step();`;
  const child = spawnSync(process.execPath, [...nodeArgs, '--input-type=module', '-e', script], { encoding: 'utf8' });
  if (child.status !== 0) throw new Error(child.stderr);
  return Number(child.stdout);
}

t.test('without the cap a surviving load grows the semi-space past 8 MiB (the case the cap is for)', async (t) => {
  t.ok(semiSpaceAfterLoad(false) > 8, 'V8 grows it to its 16 MiB default');
});

t.test('with the cap it stops at 8 MiB', async (t) => {
  const semi = semiSpaceAfterLoad(true);
  t.ok(semi >= 1 && semi <= 8, `semi-space ${semi} MiB`);
  t.ok(semiSpaceAfterLoad('stopped') > 8, 'stopped: V8 grows it again');
});

t.test("the operator's own size wins", async (t) => {
  t.equal(semiSpaceAfterLoad(true, ['--max-semi-space-size=16']), 16, 'grown to what the operator allowed');
  t.ok(operatorSizedYoungGeneration(['--max-semi-space-size=4'], undefined));
  t.ok(operatorSizedYoungGeneration([], '--max-old-space-size=512 --semi-space-growth-factor=4'));
  t.ok(operatorSizedYoungGeneration(['--max_semi_space_size=4'], ''));
  t.notOk(operatorSizedYoungGeneration(['--max-old-space-size=512'], '--enable-source-maps'));
});
