import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // The end-to-end tests build and boot real images: one file at a time on a 2-core machine.
    fileParallelism: false,
    reporters: ['default'],
  },
});
