/** `aios build image|iso|llama|kernel`: run the build stages for a recipe and print where the outputs went. */
import type { Command } from 'commander';
import { build, buildKernelStage, buildLlamaStage } from '../build/index.js';
import { collect, out, recipeOptions } from './common.js';

type BuildCliOptions = { recipe: string; set: string[]; out: string; cacheDir?: string; cache: boolean; rebuild: string[]; rotateCredentials?: boolean; signingKey?: string; json?: boolean };

export function registerBuild(p: Command): void {
  const b = p.command('build').description('build artefacts from a recipe');
  const buildCommand = (name: string, description: string, formats?: ('disk' | 'iso')[]) =>
    recipeOptions(
      b
        .command(name)
        .description(description)
        .option('-o, --out <dir>', 'output directory', 'out')
        .option('--cache-dir <dir>', 'stage and package cache (default: $AIOS_CACHE_DIR or ~/.cache/aios)')
        .option('--no-cache', 'rebuild every stage')
        .option('--rebuild <stage>', 're-run this stage even if cached, e.g. overlay (repeatable; for reproducibility checks)', collect, [] as string[])
        .option('--rotate-credentials', "make the image's CA, certificates and API key anew in its pki dir (runtime.tls); clients then need the new files")
        .option('--signing-key <file>', 'image.layout = "appliance": the OpenPGP secret key that signs out/update/SHA256SUMS (default: $AIOS_GPG_PRIVATE_KEY; passphrase: $AIOS_GPG_PASSPHRASE); its public key goes into the image')
        .option('--json', 'print the build result as JSON (no progress output)'),
    ).action(async (o: BuildCliOptions) => {
      const res = await build({
        recipe: o.recipe,
        sets: o.set,
        outDir: o.out,
        cacheDir: o.cacheDir,
        noCache: !o.cache,
        rebuild: o.rebuild,
        rotateCredentials: o.rotateCredentials,
        signingKey: o.signingKey,
        formats,
        renderer: o.json ? 'silent' : undefined,
      });
      for (const w of res.warnings) process.stderr.write(`warning: ${w}\n`);
      if (o.json) out(JSON.stringify(res, null, 2));
      else {
        for (const x of res.outputs) out(`\n${x.format === 'iso' ? 'iso:     ' : 'image:   '} ${x.file}\nmanifest: ${x.manifest}`);
        out(`log:      ${res.log}`);
        out(`stages:   ${res.stages.map((s) => `${s.name} ${s.seconds.toFixed(1)}s${s.cached ? ' (cached)' : ''}`).join(', ')}; total ${res.seconds.toFixed(1)} s`);
        if (res.pki) out(`access:   ${res.pki} (client certificate and API key for this image: --tls-dir; docs/access.md)`);
        if (res.update) out(`update:   ${res.update.dir} (version ${res.update.version}; ${res.update.fingerprint ? `SHA256SUMS signed by ${res.update.fingerprint}` : 'unsigned'}; docs/appliance.md)`);
        out(`next:     aios qemu-test ${res.image}`);
      }
    });
  buildCommand('image', "bootstrap, tune and assemble the recipe's outputs (image.formats; default: a bootable GPT disk image out/<name>.raw)");
  buildCommand('iso', 'build only the UEFI live ISO out/<name>.iso (squashfs root under a tmpfs overlay; reuses the stages `build image` cached)', ['iso']);

  recipeOptions(
    b
      .command('llama')
      .description('build only llama.cpp for the recipe (cached; the same stage `build image` runs)')
      .option('--cache-dir <dir>', 'stage cache (default: $AIOS_CACHE_DIR or ~/.cache/aios)')
      .option('--no-cache', 'rebuild even if cached')
      .option('--json', 'print the result as JSON'),
  ).action(async (o: { recipe: string; set: string[]; cacheDir?: string; cache: boolean; json?: boolean }) => {
    const res = await buildLlamaStage({ recipe: o.recipe, sets: o.set, cacheDir: o.cacheDir, noCache: !o.cache, renderer: o.json ? 'silent' : undefined });
    if (o.json) out(JSON.stringify(res, null, 2));
    else {
      const isa = res.info.isa as { description: string };
      out(`binaries:  ${res.binDir}\nversion:   ${res.info.version.split('\n')[0]}\nneeds CPU: ${isa.description}`);
      const tc = (res.info as { toolchain?: { toolchain?: string; suite?: string; gcc?: string; glibc?: string } }).toolchain;
      if (tc?.toolchain === 'tools-tree') out(`toolchain: tools tree of ${tc.suite} (${tc.gcc}; ${tc.glibc}): the binaries need that suite's glibc and libstdc++`);
      out(`stage:     ${res.stage.cached ? 'cached' : 'built'} in ${res.stage.seconds.toFixed(1)} s`);
    }
  });

  recipeOptions(
    b
      .command('kernel')
      .description("build only the recipe's custom kernel (kernel.build = true; cached: the same stage `build image` runs, which then reuses it)")
      .option('--cache-dir <dir>', 'stage cache (default: $AIOS_CACHE_DIR or ~/.cache/aios)')
      .option('--no-cache', 'rebuild even if cached')
      .option('--json', 'print the result as JSON'),
  ).action(async (o: { recipe: string; set: string[]; cacheDir?: string; cache: boolean; json?: boolean }) => {
    const res = await buildKernelStage({ recipe: o.recipe, sets: o.set, cacheDir: o.cacheDir, noCache: !o.cache, renderer: o.json ? 'silent' : undefined });
    if (o.json) out(JSON.stringify(res, null, 2));
    else {
      out(`kernel:    ${res.info.release} (${res.info.source.package} ${res.info.source.version}, base ${res.info.base})`);
      out(`files:     ${res.dir}/root (boot/vmlinuz-${res.info.release}, usr/lib/modules/${res.info.release})`);
      out(`stage:     ${res.stage.cached ? 'cached' : 'built'} in ${res.stage.seconds.toFixed(1)} s; \`aios build image\` with the same recipe reuses it`);
    }
  });
}
