import { defineConfig } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * vitest's own order, except that the custom kernel's boot test comes last: the longer the run before
 * it, the more of the kernel's compile the background prefetch (test/prefetch.ts) has done.
 */
class KernelTestLast extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const last = (f: TestSpecification) => f.moduleId.endsWith('/test/e2e/custom-kernel.test.ts');
    return [...sorted.filter((f) => !last(f)), ...sorted.filter(last)];
  }
}

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // The end-to-end tests build and boot real images: one file at a time on a 2-core machine.
    fileParallelism: false,
    sequence: { sequencer: KernelTestLast },
    // Temp dirs: each file's are removed after it (setup.ts), stale ones of killed runs before the run.
    setupFiles: ['test/setup.ts'],
    globalSetup: ['test/global-setup.ts'],
    reporters: ['default'],
  },
});
