#!/usr/bin/env node
// Runs test/bench-cloud.ts (the strategic layer's added latency against a mock provider): bundles it
// with esbuild (a dependency already; packages stay external) into a temporary module and imports it.
// Usage: node scripts/bench-cloud.mjs [repetitions]   (it rewrites the cloud-bench section of docs/benchmarks.md)
import { build } from 'esbuild';
import { mkdtempSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = mkdtempSync(join(root, 'node_modules', '.bench-cloud-'));
const outfile = join(outDir, 'bench-cloud.mjs');
await build({ entryPoints: [join(root, 'test/bench-cloud.ts')], bundle: true, platform: 'node', format: 'esm', target: 'node20', packages: 'external', outfile, logLevel: 'warning', define: { 'import.meta.dirname': JSON.stringify(join(root, 'test')) } });
try {
  await import(pathToFileURL(outfile).href);
} finally {
  rmSync(outDir, { recursive: true, force: true });
}
