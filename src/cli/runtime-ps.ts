/** Moved to ./runtime.ts; this re-export only keeps test/e2e/runtime-pressure.test.ts's import working until it imports from there. */
export { psTable } from './runtime.js';
