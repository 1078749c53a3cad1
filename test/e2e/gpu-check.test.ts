/**
 * The prepared GPU check (issue 17: scripts/gpu-check-pack.mjs here, scripts/gpu-check.sh on a
 * machine with an NVIDIA GPU), rehearsed on this machine without one: the real pack (the pinned
 * llama.cpp source, the recipe's CUDA flags, the runtime and CLI bundles, Node.js, the bench
 * probe), then the script with --cpu-only on the default recipe's llama.cpp and a tiny model: the
 * bench entry point with all layers "on the GPU" and with none, interleaved, and aios-runtime from
 * the packed bundle on the packed Node.js answering over the OpenAI API in its sandbox, with
 * `aios ps --json` and /metrics read. What comes back must be what the device tool returns (at
 * most 8 files) and what `aios bench --from-log` reads.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { buildLlamaStage } from '../../src/build/index.js';
import { guestProblem, parseGuestBench } from '../../src/bench/guest.js';
import { REPO, tmp } from '../helpers.js';

const SCRIPT = join(REPO, 'scripts/gpu-check.sh');

describe('scripts/gpu-check.sh, rehearsed without a GPU', () => {
  it('refuses bad options and a missing pack (exit 2), and is clean under shellcheck', async () => {
    const d = tmp();
    for (const [args, msg] of [
      [['--reps', '1'], /--reps must be a whole number of at least 2/],
      [['--deadline', 'soon'], /--deadline must be whole seconds/],
      [['--bogus'], /unknown argument: --bogus/],
      [['--pack', join(d, 'none')], /pack\.json not found: run node scripts\/gpu-check-pack\.mjs/],
    ] as const) {
      const r = await execa('bash', [SCRIPT, ...args, '--out', join(d, 'out'), '--state', join(d, 'state')], { reject: false });
      expect(r.exitCode, r.stderr).toBe(2);
      expect(r.stderr).toMatch(msg);
    }
    const sc = await execa('shellcheck', [SCRIPT], { reject: false });
    expect(sc.stdout + sc.stderr).toBe('');
  });

  it('packs under the device tool\'s limit and runs every step on the CPU', { timeout: 20 * 60_000 }, async () => {
    const llama = await buildLlamaStage({ recipe: 'default', renderer: 'silent' });
    const d = tmp('aios-gpu-check-');
    const pack = join(d, 'pack');
    const p = await execa('node', [join(REPO, 'scripts/gpu-check-pack.mjs'), '--out', pack, '--arch', '89'], { reject: false, cwd: REPO });
    expect(p.exitCode, p.stderr).toBe(0);
    // An architecture that does not exist is refused by the recipe's own check, naming the key.
    const bad = await execa('node', [join(REPO, 'scripts/gpu-check-pack.mjs'), '--out', join(d, 'bad'), '--arch', '91'], { reject: false, cwd: REPO });
    expect(bad.exitCode, bad.stderr).toBe(2);
    expect(bad.stderr).toMatch(/gpu\.cuda_arch/);
    const meta = JSON.parse(readFileSync(join(pack, 'pack.json'), 'utf8')) as { bytes: number; cudaArch: number[]; llama: { commit?: string } };
    // With the working tree (a few MiB) the carried folder must stay under the tool's 64 MiB.
    expect(meta.bytes).toBeLessThan(58 * 2 ** 20);
    expect(meta.cudaArch).toEqual([89]);
    expect(meta.llama.commit).toMatch(/^[0-9a-f]{40}$/);
    // The llama stage's flags for images/cuda.toml, for the one architecture asked for.
    const cmake = readFileSync(join(pack, 'cmake-args'), 'utf8').split('\n');
    expect(cmake).toEqual(expect.arrayContaining(['-DGGML_CUDA=ON', '-DCMAKE_CUDA_ARCHITECTURES=89', '-DGGML_CUDA_FA=ON', '-DBUILD_SHARED_LIBS=OFF', '@SRC@', '@BUILD@']));
    for (const f of ['llama.cpp.tar.xz', 'node.xz', 'triad', 'runtime/aios-runtime.mjs', 'runtime/aios-cli.mjs', 'runtime/proto/runtime.proto']) expect(statSync(join(pack, f)).size, f).toBeGreaterThan(0);

    const out = join(d, 'out');
    // The shapes come from the pack (src/models/synth.ts's SHAPES): an unknown one is refused with the list.
    const huge = await execa('bash', [SCRIPT, '--pack', pack, '--out', out, '--state', join(d, 'state'), '--shape', 'huge'], { reject: false });
    expect(huge.exitCode, huge.stderr).toBe(2);
    expect(huge.stderr).toMatch(/--shape must be one of: tiny small tinyllama-1\.1b mistral-7b got "huge"/);
    const r = await execa('bash', [SCRIPT, '--pack', pack, '--out', out, '--state', join(d, 'state'), '--cpu-only', '--llama-bin', llama.binDir, '--shape', 'tiny', '--reps', '2'], { reject: false, cwd: d });
    expect(r.exitCode, r.stderr).toBe(0);
    // What the device tool brings back: at most 8 plain files, no folders.
    const files = readdirSync(out).sort();
    expect(files).toEqual(['bench-cpu-1.log', 'bench-cpu-2.log', 'bench-gpu-1.log', 'bench-gpu-2.log', 'facts.txt', 'runtime.log', 'runtime.txt']);
    const facts = readFileSync(join(out, 'facts.txt'), 'utf8');
    expect(facts).toMatch(/^# nvidia-smi$/m);
    expect(facts).toMatch(/^# model tiny-Q4_K_M\.gguf \d+ bytes$/m);
    expect(facts).toMatch(/^DONE after \d+ s in this call$/m);
    // The bench logs read as the image's entry point's, with the layers asked for recorded.
    for (const [f, ngl] of [['bench-gpu-1.log', 99], ['bench-cpu-1.log', 0], ['bench-gpu-2.log', 99], ['bench-cpu-2.log', 0]] as const) {
      const g = parseGuestBench(readFileSync(join(out, f), 'utf8'));
      expect(guestProblem(g), f).toBeUndefined();
      expect(g.settings?.ngl, f).toBe(ngl);
      expect(g.llamaBench, f).toHaveLength(2);
    }
    const fromLog = await execa('node', [join(REPO, 'bin/aios.js'), 'bench', '--from-log', join(out, 'bench-gpu-1.log'), '--out', join(d, 'gpu-1.json')], { reject: false });
    expect(fromLog.exitCode, fromLog.stderr).toBe(0);
    // The runtime from the packed bundle: ready, three answers, ps and the VRAM series (0 without a GPU).
    const rt = readFileSync(join(out, 'runtime.txt'), 'utf8');
    expect(rt).toMatch(/^ready: yes after \d+s$/m);
    expect(rt.match(/^request \d: HTTP 200 /gm)).toHaveLength(3);
    expect(rt).toMatch(/"state": "ready"/);
    expect(rt).toMatch(/^aios_model_vram_actual_bytes\{model="model"\} 0$/m);
    expect(readFileSync(join(out, 'runtime.log'), 'utf8')).toMatch(/no NVIDIA GPU found \(nvidia-smi\)/);
  });
});
