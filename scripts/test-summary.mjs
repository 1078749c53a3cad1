// Prints the plain closing line "N passed, N failed" from vitest's JSON report (CI reads it).
import { readFileSync } from 'node:fs';
try {
  const r = JSON.parse(readFileSync(process.argv[2], 'utf8'));
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed${r.numPendingTests ? `, ${r.numPendingTests} skipped` : ''}`);
} catch (e) {
  console.log(`no test report (${e.message})`);
}
