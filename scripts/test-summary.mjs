// Prints the slowest test files and the plain closing line "N passed, N failed" from vitest's JSON
// report (CI reads the last line; the durations say where a run's time went, for the README's CI figures).
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
try {
  const r = JSON.parse(readFileSync(process.argv[2], 'utf8'));
  const files = (r.testResults ?? [])
    .filter((t) => t.startTime && t.endTime)
    .map((t) => ({ name: relative(process.cwd(), t.name), s: (t.endTime - t.startTime) / 1000 }))
    .sort((a, b) => b.s - a.s);
  if (files.length) {
    const total = files.reduce((a, f) => a + f.s, 0);
    const wall = (Math.max(...r.testResults.map((t) => t.endTime)) - r.startTime) / 1000;
    const min = (s) => `${(s / 60).toFixed(1)} min`;
    console.log(`test files: ${files.length}, ${min(total)} in files, ${min(wall)} wall; slowest:`);
    for (const f of files.slice(0, 10)) console.log(`  ${min(f.s).padStart(9)}  ${f.name}`);
  }
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed${r.numPendingTests ? `, ${r.numPendingTests} skipped` : ''}`);
} catch (e) {
  console.log(`no test report (${e.message})`);
}
