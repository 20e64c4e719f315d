/** Globs (policy.md "Globs"): the compiled matchers, fast paths included, against the reference's own matcher. */
import t from 'tap';
import { compileGlob } from '../../src/policy/glob.js';
import { globMatches } from '../helpers/reference.js';

const GLOBS = [
  '*',
  '**',
  'read_*',
  '*_file',
  '*secret*',
  'read_file',
  'r?ad_*',
  '*.*',
  'a*b',
  '*a*b*',
  'read_**',
  '**_file',
  '.*',
  '(x)*',
  'é*',
  '*\n',
  '?',
];
const SUBJECTS = [
  null,
  '',
  'read_',
  'read_file',
  'READ_file',
  'xread_file',
  'get_secret',
  'secret',
  'my_file',
  '_file',
  'file',
  'a.b',
  'ab',
  'axxb',
  'bxa',
  '.x',
  '(x)y',
  'éa',
  'line\n',
  'é',
  'x',
];

t.test('every glob agrees with the reference on every subject', async (t) => {
  for (const glob of GLOBS) {
    const match = compileGlob(glob);
    for (const subject of SUBJECTS)
      t.equal(match(subject), globMatches(glob, subject), `${JSON.stringify(glob)} ~ ${JSON.stringify(subject)}`);
  }
});

t.test('the fast shapes', async (t) => {
  t.ok(compileGlob('read_*')('read_'), 'a star matches the empty run');
  t.notOk(compileGlob('read_*')(null), 'no tool: only stars match');
  t.notOk(compileGlob('*_file')('my_file.txt'), 'anchored at the end');
  t.ok(compileGlob('*secret*')('get_secret_key'));
  t.notOk(compileGlob('*secret*')('SECRET'), 'case-sensitive');
});
