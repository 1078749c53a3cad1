import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { execa } from 'execa';
import { loadRecipe } from '../../src/config/load.js';
import { cmakeArgs, isaFor, llamaBinaries, llamaHostProblems } from '../../src/build/llama.js';
import { cpuFor } from '../../src/qemu/index.js';
import { UserError } from '../../src/util/errors.js';
import { recipes } from '../helpers.js';

const BASE = [
  '-S', 'src', '-B', 'build', '-G', 'Ninja',
  '-DCMAKE_BUILD_TYPE=Release',
  '-DBUILD_SHARED_LIBS=OFF',
  '-DLLAMA_BUILD_TESTS=OFF',
  '-DLLAMA_BUILD_EXAMPLES=OFF',
  '-DLLAMA_USE_PREBUILT_UI=OFF',
  '-DLLAMA_OPENSSL=OFF',
  '-DGGML_CCACHE=ON',
  '-DGGML_RPC=ON',
];

describe('llama.cpp CMake invocation', () => {
  it('native: -DGGML_NATIVE=ON (schema default)', async () => {
    const r = await loadRecipe('default', { sets: ['llama.cpu=native'] });
    expect(cmakeArgs(r.llama, 'src', 'build')).toEqual([...BASE, '-DGGML_NATIVE=ON']);
  });

  it('x86-64-v3 (the default recipe): AVX2/FMA/F16C/BMI2 on, AVX-512 off, not native', async () => {
    const r = await loadRecipe('default');
    expect(r.llama.cpu).toBe('x86-64-v3');
    expect(cmakeArgs(r.llama, 'src', 'build')).toEqual([
      ...BASE,
      '-DGGML_NATIVE=OFF', '-DGGML_SSE42=ON', '-DGGML_AVX=ON', '-DGGML_AVX2=ON', '-DGGML_BMI2=ON', '-DGGML_FMA=ON', '-DGGML_F16C=ON', '-DGGML_AVX512=OFF',
    ]);
  });

  it('x86-64 baseline turns every extension off; v4 adds AVX-512', async () => {
    const base = cmakeArgs((await loadRecipe('default', { sets: ['llama.cpu=x86-64'] })).llama, 's', 'b');
    expect(base.filter((a) => a.endsWith('=ON') && a.startsWith('-DGGML_') && a !== '-DGGML_CCACHE=ON' && a !== '-DGGML_RPC=ON')).toEqual([]);
    expect(cmakeArgs((await loadRecipe('default', { sets: ['llama.cpu=x86-64-v4'] })).llama, 's', 'b')).toContain('-DGGML_AVX512=ON');
  });

  it('llama.rpc (default on) builds the RPC backend and ggml-rpc-server; off: neither', async () => {
    const on = await loadRecipe('default');
    expect(cmakeArgs(on.llama, 's', 'b')).toContain('-DGGML_RPC=ON');
    expect(llamaBinaries(on.llama)).toEqual(['llama-server', 'llama-bench', 'llama-quantize', 'ggml-rpc-server']);
    const off = await loadRecipe('default', { sets: ['llama.rpc=false'] });
    expect(cmakeArgs(off.llama, 's', 'b')).not.toContain('-DGGML_RPC=ON');
    expect(llamaBinaries(off.llama)).not.toContain('ggml-rpc-server');
  });

  it('cuda: the CUDA backend for gpu.cuda_arch (machine code for each, PTX for the newest), FA per gpu.flash_attention, no NCCL; extra -D options come last', async () => {
    const r = await loadRecipe('cuda', { sets: ['llama.cmake_args=["-DGGML_CUDA_GRAPHS=OFF"]'] });
    const args = cmakeArgs(r.llama, 'src', 'build', r.gpu);
    expect(args.slice(-5)).toEqual(['-DGGML_CUDA=ON', '-DCMAKE_CUDA_ARCHITECTURES=75-real;80-real;86-real;89-real;90', '-DGGML_CUDA_FA=ON', '-DGGML_CUDA_NCCL=OFF', '-DGGML_CUDA_GRAPHS=OFF']);
    const one = await loadRecipe('cuda', { sets: ['gpu.cuda_arch=[89]', 'gpu.flash_attention=false'] });
    expect(cmakeArgs(one.llama, 's', 'b', one.gpu)).toEqual(expect.arrayContaining(['-DCMAKE_CUDA_ARCHITECTURES=89', '-DGGML_CUDA_FA=OFF']));
    expect(cmakeArgs((await loadRecipe('default')).llama, 's', 'b').join(' ')).not.toMatch(/CUDA/);
  });

  it('validates the source table', async () => {
    const f = recipes({ bad: 'extends = "default"\n[llama.source]\ntype = "tarball"\nurl = "https://example.org/x.tar.gz"\nsha256 = "nope"\n' });
    await expect(loadRecipe(f.bad!)).rejects.toThrow(/llama\.source\.sha256: must be 64 lowercase hex digits/);
    const g = recipes({ bad: 'extends = "default"\n[llama.source]\ntype = "svn"\n' });
    await expect(loadRecipe(g.bad!)).rejects.toThrow(/llama\.source\.type/);
    const d = await loadRecipe('default');
    expect(d.llama.source).toEqual({ type: 'npm', package: 'node-llama-cpp', version: '3.22.1' });
  });
});

describe('instruction set', () => {
  it('names the flags a level needs', async () => {
    const v3 = await isaFor('x86-64-v3');
    expect(v3.flags).toEqual(expect.arrayContaining(['avx2', 'fma', 'f16c']));
    expect(v3.flags.some((f) => f.startsWith('avx512'))).toBe(false);
    expect((await isaFor('x86-64-v4')).flags).toContain('avx512f');
  });

  it('reads native off this host', async () => {
    const n = await isaFor('native');
    // What gcc resolves -march=native to here (e.g. znver3), never the literal "native".
    const gcc = await execa('gcc', ['-march=native', '-Q', '--help=target']);
    const march = /^\s+-march=\s+(\S+)/m.exec(gcc.stdout)![1]!;
    expect(march).not.toBe('native');
    expect(n.march).toBe(march);
    // The flags are this host's (from /proc/cpuinfo), unlike a fixed level's list.
    const host = new Set(/^flags\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))![1]!.split(/\s+/));
    expect(n.flags.length).toBeGreaterThan(0);
    for (const f of n.flags) expect(host.has(f), f).toBe(true);
    for (const f of ['sse4_2', 'avx', 'avx2', 'fma', 'f16c', 'avx512f']) expect(n.flags.includes(f), f).toBe(host.has(f));
    expect(n.cpu).toBe('native');
    expect(n.description).toBe(`native = this build host's ${march} (${n.flags.join(', ')}); other CPUs without these get SIGILL`);
  });

  it('qemu-test refuses AVX-512 binaries under TCG, and uses -cpu max for AVX2 ones', async () => {
    await expect(cpuFor(['avx2', 'avx512f'], 'tcg')).rejects.toThrow(UserError);
    await expect(cpuFor(['avx2', 'avx512f'], 'tcg')).rejects.toThrow(/QEMU cannot emulate without KVM.*llama.cpu=x86-64-v3/);
    expect(await cpuFor((await isaFor('x86-64-v3')).flags, 'tcg')).toBe('max');
  });
});
