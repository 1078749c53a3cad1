#!/usr/bin/env node
// Packs what scripts/gpu-check.sh needs on a machine with an NVIDIA GPU that reaches no mirror
// (issue 17; docs/gpu.md "On a GPU machine"): the recipe's pinned llama.cpp source, the CMake flags
// the recipe's llama stage would pass (with the GPU's own architecture), aios-runtime and the `aios`
// command as the image ships them (esbuild bundles), this host's Node.js (xz), bubblewrap (the model
// sandbox where the machine has neither it nor util-linux ≥ 2.40) and the static bandwidth probe of
// the bench entry point. Everything goes into one folder (default .gpu-check/, git-ignored), which
// the device tool carries (`carry: [".gpu-check"]`); the whole working tree must stay under 64 MiB.
//
// Usage: node scripts/gpu-check-pack.mjs [--recipe cuda] [--arch 90] [--out .gpu-check]
//        (needs `npm run build` first: it imports dist/)
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  if (i < 0) return def;
  if (i + 1 >= args.length) fail(`${name} needs a value`);
  return args[i + 1];
};
function fail(msg) {
  process.stderr.write(`gpu-check-pack: ${msg}\n`);
  process.exit(2);
}
if (args.includes('--help') || args.includes('-h')) {
  process.stdout.write('usage: node scripts/gpu-check-pack.mjs [--recipe cuda] [--arch 90] [--out .gpu-check]\n  --arch  the GPU\'s CUDA architecture (90 = Hopper: H100, H200)\n');
  process.exit(0);
}
for (const a of args) if (a.startsWith('--') && !['--recipe', '--arch', '--out'].includes(a)) fail(`unknown option ${a} (--help)`);
const recipeRef = opt('--recipe', 'cuda');
const arch = opt('--arch', '90');
if (!/^[0-9]+$/.test(arch)) fail(`--arch must be a CUDA architecture number such as 90, got "${arch}"`);
const out = resolve(opt('--out', '.gpu-check'));
if (!existsSync(join(root, 'dist/build/llama.js'))) fail('dist/ is missing: run npm run build first');

const { loadRecipe } = await import(join(root, 'dist/config/load.js'));
const { SHAPES, shapeArgs } = await import(join(root, 'dist/models/synth.js'));
const { cmakeArgs, fetchSource } = await import(join(root, 'dist/build/llama.js'));
const { bundleRuntime } = await import(join(root, 'dist/build/runtime-bundle.js'));
const { bundleCli } = await import(join(root, 'dist/build/cli-bundle.js'));
const { triadStaticBinary } = await import(join(root, 'dist/bench/triad.js'));
const { defaultCacheDir } = await import(join(root, 'dist/util/paths.js'));

// The recipe's own check refuses an architecture that does not exist (exit 2, naming gpu.cuda_arch).
let r;
try {
  r = await loadRecipe(recipeRef, { sets: [`gpu.cuda_arch=[${arch}]`] });
} catch (e) {
  fail(e.message);
}
if (r.llama.gpu !== 'cuda') fail(`recipe ${recipeRef} has llama.gpu = "${r.llama.gpu}": pack a CUDA recipe (images/cuda.toml)`);
const say = (s) => process.stderr.write(`gpu-check-pack: ${s}\n`);

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const work = join(out, '.work');

// The llama.cpp source, as the llama stage fetches it, without its history and with one vocabulary
// (the synthesized model's tokenizer) of the models/ folder's many.
say(`llama.cpp source (${r.llama.source.type})`);
const src = join(work, 'src');
const info = await fetchSource(r.llama, src, join(work, 'fetch'));
rmSync(join(src, '.git'), { recursive: true, force: true });
for (const f of readdirSync(join(src, 'models'))) if (f.endsWith('.gguf') && f !== 'ggml-vocab-llama-spm.gguf') rmSync(join(src, 'models', f));
execFileSync('tar', ['-C', work, '--sort=name', '--owner=0', '--group=0', '--numeric-owner', '-cJf', join(out, 'llama.cpp.tar.xz'), 'src'], { env: { ...process.env, XZ_OPT: '-6 -T2' } });

// The llama stage's CMake flags for this recipe, for the one architecture of the GPU there.
writeFileSync(join(out, 'cmake-args'), cmakeArgs(r.llama, '@SRC@', '@BUILD@', r.gpu).join('\n') + '\n');
// The synthesized models' dimensions, as `aios models synth` writes them (name, then synth-gguf.py's arguments).
writeFileSync(join(out, 'shapes'), Object.entries(SHAPES).map(([name, s]) => `${name} ${shapeArgs(s).join(' ')}`).join('\n') + '\n');

say('aios-runtime and aios (esbuild bundles, as in the image)');
await bundleRuntime(join(out, 'runtime'));
await bundleCli(join(out, 'runtime'));

say(`Node.js ${process.version} (xz)`);
execFileSync('sh', ['-c', `xz -6 -T2 -c "$0" > "$1"`, process.execPath, join(out, 'node.xz')]);
if (existsSync('/usr/bin/bwrap')) copyFileSync('/usr/bin/bwrap', join(out, 'bwrap'));
copyFileSync(await triadStaticBinary(defaultCacheDir()), join(out, 'triad'));
chmodSync(join(out, 'triad'), 0o755);

rmSync(work, { recursive: true, force: true });
const bytes = (p) => (statSync(p).isDirectory() ? readdirSync(p).reduce((s, f) => s + bytes(join(p, f)), 0) : statSync(p).size);
const total = bytes(out);
writeFileSync(
  join(out, 'pack.json'),
  JSON.stringify({ recipe: r.name, llama: info, cudaArch: r.gpu.cuda_arch, flashAttention: r.gpu.flash_attention, node: process.version, made: new Date().toISOString(), bytes: total }, null, 1) + '\n',
);
say(`${out}: ${(total / 2 ** 20).toFixed(1)} MiB (llama.cpp ${info.commit ?? info.origin}, sm_${arch})`);
if (total > 58 * 2 ** 20) fail(`${(total / 2 ** 20).toFixed(1)} MiB: with the working tree that is over the device tool's 64 MiB`);
