/**
 * Runs in every test file (vitest setupFiles): after the file's own afterAll hooks (hooks run as a
 * stack, this one first registered, so last), the temp dirs it made with tmp() are removed —
 * images, models and sockets included, mounts unmounted first. CI machines keep /tmp between runs
 * and have limited disk.
 */
import { afterAll } from 'vitest';
import { safeRemove } from '../src/util/cleanup.js';
import { made } from './helpers.js';

afterAll(async () => {
  for (const d of made.splice(0)) await safeRemove(d);
});
