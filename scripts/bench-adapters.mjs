#!/usr/bin/env node
// Runs test/bench-adapters.ts (switching LoRA adapter sets: added first-token latency; selection by task): bundles it
// with esbuild (a dependency already; packages stay external) into a temporary module and imports it.
// Usage: node scripts/bench-adapters.mjs [repetitions]   (it rewrites the adapter-bench section of docs/benchmarks.md)
import { build } from 'esbuild';
import { mkdtempSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = mkdtempSync(join(root, 'node_modules', '.bench-adapters-'));
const outfile = join(outDir, 'bench-adapters.mjs');
await build({ entryPoints: [join(root, 'test/bench-adapters.ts')], bundle: true, platform: 'node', format: 'esm', target: 'node20', packages: 'external', outfile, logLevel: 'warning', define: { 'import.meta.dirname': JSON.stringify(join(root, 'test')) } });
try {
  await import(pathToFileURL(outfile).href);
} finally {
  rmSync(outDir, { recursive: true, force: true });
}
