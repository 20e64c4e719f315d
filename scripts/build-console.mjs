#!/usr/bin/env node
/**
 * Builds the browser console (console/) into dist/console: one esbuild bundle of the TypeScript
 * (console/src/main.ts → app.js) and the static files. Part of `npm run build`, so `npm start`,
 * `npm test` and `npm pack` always serve what the source says. Nothing is fetched at run time.
 */
import { copyFileSync, mkdirSync } from 'node:fs';
import { build } from 'esbuild';

const root = new URL('..', import.meta.url);
const out = new URL('dist/console/', root);
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [new URL('console/src/main.ts', root).pathname],
  outfile: new URL('app.js', out).pathname,
  bundle: true,
  format: 'esm',
  target: 'es2022',
  platform: 'browser',
  legalComments: 'none',
  logLevel: 'warning',
});
for (const file of ['index.html', 'console.css', 'favicon.svg']) copyFileSync(new URL(`console/${file}`, root), new URL(file, out));
