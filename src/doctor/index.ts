/**
 * `aios doctor`: runs a list of checks (all at once; each has its own short timeouts) and sums their
 * findings up in a verdict. The list decides what is checked: `hostChecks()` for a build host;
 * `machineChecks()` (machine.ts, bundled into the image's `aios`) for a running aios machine, run and
 * printed by the same code (run.ts, format.ts).
 */

export type { Check, Finding, Purpose, Report, Result, Status, Verdict } from './types.js';
export { hostChecks, type HostCheckOptions } from './host.js';
export { hostProbe, type HostProbe } from './probe.js';
export { formatReport } from './format.js';
export { runChecks, verdictOf, exitCodeOf } from './run.js';
