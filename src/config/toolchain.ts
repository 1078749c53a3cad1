/**
 * Where llama.cpp is compiled (issue 17's tools tree, docs/gpu.md): the recipe key
 * `llama.toolchain`. Kept apart from schema.ts, which spreads these keys into LlamaSchema.
 */
import { z } from 'zod';

export const LLAMA_TOOLCHAINS = ['host', 'tools-tree'] as const;
export type LlamaToolchain = (typeof LLAMA_TOOLCHAINS)[number];

export const llamaToolchainKeys = {
  toolchain: z
    .enum(LLAMA_TOOLCHAINS)
    .default('host')
    .describe(
      "Where llama.cpp is compiled. host: this machine's gcc/cmake (its glibc and libstdc++ must not be newer than the image's; the binaries also run on this host). tools-tree: a build root of the image's own distro and suite (mmdebstrap, base.mirror; cached in the aios cache under stages/tools-tree) with build-essential, cmake, ninja, ccache, git and pkg-config, entered with bubblewrap, so the binaries link against the image's own libraries whatever the host is; Debian bases only. llama.gpu = \"cuda\" needs it: then the tree also has the suite's nvidia-cuda-toolkit (non-free; docs/gpu.md)",
    ),
};
