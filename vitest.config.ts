import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // The end-to-end tests build and boot real images: one file at a time on a 2-core machine.
    fileParallelism: false,
    // Temp dirs: each file's are removed after it (setup.ts), stale ones of killed runs before the run.
    setupFiles: ['test/setup.ts'],
    globalSetup: ['test/global-setup.ts'],
    reporters: ['default'],
  },
});
