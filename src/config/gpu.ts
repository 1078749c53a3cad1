/**
 * GPU images (issue 17, docs/gpu.md): the recipe's [gpu] table (the NVIDIA driver in the image, the
 * CUDA architectures llama.cpp is compiled for) and the checks that tie it to llama.gpu. Kept apart
 * from schema.ts, which takes GpuSchema from here.
 */
import { z } from 'zod';

export const GPU_DRIVERS = ['none', 'open', 'proprietary'] as const;

/**
 * CUDA architectures (compute capability × 10) that trixie's CUDA 12.4 compiles for and llama.cpp
 * supports (its CMake lists 50 as the lowest for CUDA 12): Maxwell to Hopper.
 */
export const CUDA_ARCHS = [50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90] as const;

/** The default list: Turing (75) to Hopper (90), the GPUs the open kernel modules drive. */
export const DEFAULT_CUDA_ARCHS = [75, 80, 86, 89, 90];

/** The oldest architecture the open kernel modules drive (Turing); older GPUs need the proprietary ones. */
export const OPEN_DRIVER_MIN_ARCH = 75;

export const GpuSchema = z
  .strictObject({
    driver: z
      .enum(GPU_DRIVERS)
      .default('none')
      .describe(
        'NVIDIA kernel driver in the image: none; open (nvidia-open-kernel-dkms: the open kernel modules, Turing and newer); proprietary (nvidia-kernel-dkms, also older GPUs). Either is built by DKMS in the image root for the image\'s own kernel, with nvidia-smi, nvidia-persistenced and libcuda1, from Debian\'s non-free component (listed in the manifest\'s nonfree)',
      ),
    cuda_arch: z
      .array(
        z
          .number()
          .int()
          .refine((n) => (CUDA_ARCHS as readonly number[]).includes(n), { message: `must be one of ${CUDA_ARCHS.join(', ')} (compute capability × 10, as CUDA 12.4 knows them)` }),
      )
      .min(1)
      .default(DEFAULT_CUDA_ARCHS)
      .describe('With llama.gpu = "cuda": the GPU architectures llama.cpp\'s CUDA kernels are compiled for (compute capability × 10: 75 Turing, 80 A100, 86 RTX 30xx, 89 RTX 40xx/L4, 90 H100/H200). Machine code for each; the newest also as PTX, which newer GPUs compile at load. Each one adds compile time'),
    flash_attention: z
      .boolean()
      .default(true)
      .describe('With llama.gpu = "cuda": compile ggml\'s FlashAttention CUDA kernels (GGML_CUDA_FA). false saves much of the compile time; llama-server then cannot use --flash-attn on the GPU'),
  })
  .describe('NVIDIA GPU: driver and CUDA architectures (docs/gpu.md)');

export type GpuRecipe = z.output<typeof GpuSchema>;

/** The defaults, for callers that have no recipe (pure). */
export const GPU_DEFAULTS: GpuRecipe = GpuSchema.parse({});

/** CMake's CUDA architecture list: machine code for each, the newest also as PTX (pure). */
export function cudaArchitectures(archs: readonly number[]): string {
  const sorted = [...new Set(archs)].sort((a, b) => a - b);
  return sorted.map((a, i) => (i === sorted.length - 1 ? String(a) : `${a}-real`)).join(';');
}

/** Cross-key checks of [gpu] against llama (exit 2 with the key named). */
export function gpuProblems(r: { gpu: GpuRecipe; llama: { enabled: boolean; gpu: string; toolchain: string }; base: { distro: string }; kernel: { build: boolean } }): { path: string; message: string }[] {
  const out: { path: string; message: string }[] = [];
  const cuda = r.llama.enabled && r.llama.gpu === 'cuda';
  if (cuda && r.llama.toolchain !== 'tools-tree') {
    out.push({
      path: 'llama.toolchain',
      message: 'llama.gpu = "cuda" is compiled in a tools tree of the image\'s suite (its CUDA toolkit matches the CUDA libraries the image gets; a host nvcc would not): set llama.toolchain = "tools-tree"',
    });
  }
  if (cuda && r.gpu.driver === 'none') {
    out.push({ path: 'gpu.driver', message: 'llama.gpu = "cuda" needs the NVIDIA driver in the image (libcuda and the kernel module): set gpu.driver = "open" (Turing and newer) or "proprietary"' });
  }
  if (r.gpu.driver !== 'none' && r.base.distro !== 'debian') {
    out.push({ path: 'gpu.driver', message: `the NVIDIA driver comes from Debian's non-free packages, built by DKMS in the image root; base.distro = "${r.base.distro}" has none here: set gpu.driver = "none"` });
  }
  if (r.gpu.driver !== 'none' && r.kernel.build) {
    out.push({ path: 'gpu.driver', message: 'the NVIDIA module is built by DKMS for the distribution\'s kernel (its headers are in the root), and kernel.build replaces that kernel: use the stock kernel (kernel.build = false) with gpu.driver' });
  }
  if (cuda && r.gpu.driver === 'open') {
    const old = r.gpu.cuda_arch.filter((a) => a < OPEN_DRIVER_MIN_ARCH);
    if (old.length) out.push({ path: 'gpu.cuda_arch', message: `${old.join(', ')}: the open kernel modules drive Turing (75) and newer only: remove these or set gpu.driver = "proprietary"` });
  }
  return out;
}
