/**
 * The custom kernel CI boots (test/e2e/custom-kernel.test.ts), shared with the run's background
 * prefetch (test/prefetch.ts), so that both ask the kernel stage for the same cache key.
 */
export const KERNEL_RECIPE = 'custom-kernel';
export const FRAGMENTS = ['inference', 'single-socket'];
/** kernel.base = "tiny": the kernel's tinyconfig + kvm_guest.config + kernel-configs/tiny.config. */
export const KERNEL_SETS = ['kernel.base=tiny', `kernel.fragments=${JSON.stringify(FRAGMENTS)}`];
