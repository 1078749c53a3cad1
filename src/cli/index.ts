/** The CLI: parses arguments and calls the programmatic API. No build logic lives here. */
import { Command, Option } from 'commander';
import { readdir, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import ora from 'ora';
import { stringify as tomlStringify } from 'smol-toml';
import { loadRecipe } from '../config/load.js';
import { recipeReference } from '../config/docs.js';
import { build, buildLlamaStage } from '../build/index.js';
import { kernelCheck } from '../kernel/check.js';
import { loadFragments } from '../kernel/config.js';
import { debianKernel } from '../kernel/debian.js';
import { listModels, pullModel, removeModel, verifyModels } from '../models/store.js';
import { inspectModel } from '../models/gguf.js';
import { QUANTS, SHAPES, synthModel, type Quant } from '../models/synth.js';
import { formatSize } from '../util/size.js';
import { defaultCacheDir } from '../util/paths.js';
import { kernelCmdline, identity, tuningArgs } from '../build/context.js';
import { distroFor } from '../distros/index.js';
import { cmakeArgs, isaFor } from '../build/llama.js';
import { qemuTest, qemuInteractive, type Media } from '../qemu/index.js';
import { UserError } from '../util/errors.js';
import { addRuntimeSchedulerCommands } from './runtime-ps.js';
import { CommandError } from '../util/exec.js';
import { paths } from '../util/paths.js';
import { cleanupAll } from '../util/cleanup.js';
import { confirmationMatches, describeTarget, flash, type Progress } from '../flash/index.js';

const collect = (v: string, prev: string[]) => [...prev, v];
const out = (s: string) => process.stdout.write(s.endsWith('\n') ? s : s + '\n');

function recipeOptions(cmd: Command): Command {
  return cmd
    .option('-r, --recipe <name|file>', 'recipe name in images/ or a path to a .toml file', 'default')
    .option('-s, --set <key=value>', 'override one recipe key (repeatable), e.g. --set image.size=4G', collect, [] as string[]);
}

export function program(): Command {
  const p = new Command('aios')
    .description('Turn one TOML recipe into a bootable, inference-tuned Linux image')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)');

  recipeOptions(
    p
      .command('summary')
      .description('print the fully resolved recipe (defaults, extends and --set applied)')
      .option('--json', 'print JSON instead of TOML'),
  ).action(async (o: { recipe: string; set: string[]; json?: boolean }) => {
    const r = await loadRecipe(o.recipe, { sets: o.set });
    const distro = distroFor(r.base.distro);
    const id = identity(r);
    const derived = {
      packages: distro.packages(r),
      kernel_cmdline: kernelCmdline(r, id),
      warnings: tuningArgs(r).warnings,
      output: `out/${r.name}.raw`,
      llama: r.llama.enabled ? { isa: await isaFor(r.llama.cpu), cmake: cmakeArgs(r.llama, '<src>', '<build>') } : null,
    };
    if (o.json) out(JSON.stringify({ ...r, derived }, null, 2));
    else {
      const { sources, ...rest } = r;
      out(`# recipe ${r.name}: ${sources.join(' <- ')}\n` + tomlStringify(JSON.parse(JSON.stringify({ ...rest, derived }))));
    }
  });

  p.command('recipes')
    .description('list the recipes in images/')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const names = (await readdir(paths.images)).filter((f) => f.endsWith('.toml')).map((f) => basename(f, '.toml'));
      const rows = [];
      for (const n of names) {
        const r = await loadRecipe(join(paths.images, `${n}.toml`)).catch((e: Error) => ({ description: `INVALID: ${e.message.split('\n')[0]}` }));
        rows.push({ name: n, description: r.description });
      }
      if (o.json) out(JSON.stringify(rows, null, 2));
      else for (const r of rows) out(`${r.name.padEnd(20)} ${r.description}`);
    });

  const b = p.command('build').description('build artefacts from a recipe');
  type BuildCliOptions = { recipe: string; set: string[]; out: string; cacheDir?: string; cache: boolean; rebuild: string[]; json?: boolean };
  const buildCommand = (name: string, description: string, formats?: ('disk' | 'iso')[]) =>
    recipeOptions(
      b
        .command(name)
        .description(description)
        .option('-o, --out <dir>', 'output directory', 'out')
        .option('--cache-dir <dir>', 'stage and package cache (default: $AIOS_CACHE_DIR or ~/.cache/aios)')
        .option('--no-cache', 'rebuild every stage')
        .option('--rebuild <stage>', 're-run this stage even if cached, e.g. overlay (repeatable; for reproducibility checks)', collect, [] as string[])
        .option('--json', 'print the build result as JSON (no progress output)'),
    ).action(async (o: BuildCliOptions) => {
      const res = await build({
        recipe: o.recipe,
        sets: o.set,
        outDir: o.out,
        cacheDir: o.cacheDir,
        noCache: !o.cache,
        rebuild: o.rebuild,
        formats,
        renderer: o.json ? 'silent' : undefined,
      });
      for (const w of res.warnings) process.stderr.write(`warning: ${w}\n`);
      if (o.json) out(JSON.stringify(res, null, 2));
      else {
        for (const x of res.outputs) out(`\n${x.format === 'iso' ? 'iso:     ' : 'image:   '} ${x.file}\nmanifest: ${x.manifest}`);
        out(`log:      ${res.log}`);
        out(`stages:   ${res.stages.map((s) => `${s.name} ${s.seconds.toFixed(1)}s${s.cached ? ' (cached)' : ''}`).join(', ')}; total ${res.seconds.toFixed(1)} s`);
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
      out(`stage:     ${res.stage.cached ? 'cached' : 'built'} in ${res.stage.seconds.toFixed(1)} s`);
    }
  });

  const m = p.command('models').description('GGUF models: the catalog, downloads, checks, synthesized test models');
  const modelsDir = (d?: string) => d ?? join(defaultCacheDir(), 'models');
  m.command('list')
    .description('list the catalog and which models are in the models dir')
    .option('--dir <dir>', 'models dir (default: ~/.cache/aios/models)')
    .option('--json', 'print JSON')
    .action(async (o: { dir?: string; json?: boolean }) => {
      const rows = await listModels(modelsDir(o.dir));
      if (o.json) return void out(JSON.stringify(rows, null, 2));
      for (const r of rows) {
        out(`${r.present ? '*' : ' '} ${r.id.padEnd(34)} ${r.level.padEnd(12)} ${r.quantization.padEnd(7)} ctx ${String(r.context_length).padEnd(6)} ${r.size ? formatSize(r.size).padEnd(10) : 'size ?'.padEnd(10)} ${r.license}${r.downloadable ? '' : '  (no checksum yet: pull by URL with --sha256)'}${r.verified ? '' : '  [checksum not verified here]'}`);
      }
      out(`\n* = present in ${modelsDir(o.dir)}`);
    });
  m.command('pull')
    .description('download a catalog model (or a URL with --sha256): resumable, retried, checksum and GGUF checked before it lands')
    .argument('<id|url>', 'catalog id or https URL')
    .option('--sha256 <hex>', 'expected sha256 (required for a URL)')
    .option('--dir <dir>', 'models dir (default: ~/.cache/aios/models)')
    .option('--json', 'print the result as JSON')
    .action(async (ref: string, o: { sha256?: string; dir?: string; json?: boolean }) => {
      const tty = process.stderr.isTTY && !o.json;
      const res = await pullModel(ref, {
        dir: modelsDir(o.dir),
        sha256: o.sha256,
        onProgress: (p) => {
          if (!tty) return;
          const pct = p.total ? `${((p.bytes / p.total) * 100).toFixed(1)}% ` : '';
          process.stderr.write(`\r${pct}${formatSize(p.bytes)}${p.total ? ` / ${formatSize(p.total)}` : ''}  ${formatSize(p.speed)}/s${p.eta !== undefined ? `  ETA ${Math.ceil(p.eta)} s` : ''}   `);
        },
        onRetry: (n, e, ms) => process.stderr.write(`\nattempt ${n} failed (${e.message}); retrying in ${(ms / 1000).toFixed(1)} s\n`),
      });
      if (tty) process.stderr.write('\n');
      if (o.json) out(JSON.stringify(res, null, 2));
      else out(`${res.alreadyPresent ? 'already present' : 'downloaded'}: ${res.path} (${formatSize(res.bytes)}${res.resumedFrom ? `, resumed from ${formatSize(res.resumedFrom)}` : ''})`);
    });
  m.command('verify')
    .description('check every .gguf in the models dir: GGUF header, and the catalog checksum for catalog models')
    .option('--dir <dir>', 'models dir (default: ~/.cache/aios/models)')
    .option('--json', 'print JSON')
    .action(async (o: { dir?: string; json?: boolean }) => {
      const res = await verifyModels(modelsDir(o.dir));
      if (o.json) out(JSON.stringify(res, null, 2));
      else for (const r of res) out(`${r.ok ? 'ok  ' : 'BAD '} ${r.file}${r.problem ? `: ${r.problem}` : ''}`);
      if (res.some((r) => !r.ok)) process.exitCode = 1;
    });
  m.command('rm')
    .description('remove a model (and any partial download) from the models dir')
    .argument('<id|file>')
    .option('--dir <dir>', 'models dir (default: ~/.cache/aios/models)')
    .action(async (ref: string, o: { dir?: string }) => {
      out(`removed ${await removeModel(modelsDir(o.dir), ref)}`);
    });
  m.command('inspect')
    .description('read a GGUF file\'s header and metadata (refuses files that are not GGUF)')
    .argument('<file>')
    .option('--json', 'print JSON')
    .action(async (file: string, o: { json?: boolean }) => {
      const i = await inspectModel(file).catch((e: Error) => {
        throw new UserError(e.message, 1);
      });
      if (o.json) return void out(JSON.stringify(i, null, 2));
      out(`file:          ${i.file}\nGGUF version:  ${i.version}\narchitecture:  ${i.architecture}${i.name ? ` (${i.name})` : ''}`);
      out(`parameters:    ${(i.parameters / 1e6).toFixed(1)} M\nfile type:     ${i.fileType ?? '?'}\ncontext:       ${i.contextLength ?? '?'}`);
      out(`layers/embd:   ${i.layers ?? '?'} x ${i.embedding ?? '?'}, heads ${i.heads ?? '?'} (kv ${i.kvHeads ?? '?'}), vocab ${i.vocabSize ?? '?'}`);
      out(`weights:       ${formatSize(i.weightsBytes)}\nKV per token:  ${i.kvBytesPerToken ? formatSize(i.kvBytesPerToken) : '?'} (f16 cache)\nchat template: ${i.chatTemplate ? 'yes' : 'no (llama-server falls back to ChatML)'}`);
    });
  recipeOptions(
    m
      .command('synth')
      .description('write a GGUF model with random weights and a real tokenizer vocabulary (llama.cpp from the recipe is built or reused for gguf-py and llama-quantize)')
      .requiredOption('--out <file>', 'output .gguf file')
      .addOption(new Option('--shape <shape>', 'model shape').choices(Object.keys(SHAPES)).default('tiny'))
      .addOption(new Option('--quant <quant>', 'weight type').choices([...QUANTS]).default('f32'))
      .option('--seed <n>', 'random seed', (v) => Number(v), 0),
  ).action(async (o: { out: string; shape: string; quant: Quant; seed: number; recipe: string; set: string[] }) => {
    const llama = await buildLlamaStage({ recipe: o.recipe, sets: o.set, renderer: 'silent' });
    const spinner = process.stderr.isTTY ? ora({ text: 'synthesizing', stream: process.stderr }).start() : undefined;
    await synthModel({
      shape: o.shape,
      quant: o.quant,
      seed: o.seed,
      out: o.out,
      tools: { ggufPy: join(llama.shareDir, 'gguf-py'), vocab: join(llama.shareDir, 'ggml-vocab-llama-spm.gguf'), quantize: join(llama.binDir, 'llama-quantize') },
      progress: (s) => spinner && (spinner.text = s),
    }).finally(() => spinner?.stop());
    const i = await inspectModel(o.out);
    out(`${o.out}: ${i.architecture}, ${(i.parameters / 1e6).toFixed(1)} M parameters, ${i.fileType}, ${formatSize(i.weightsBytes)}`);
  });

  const k = p.command('kernel').description('kernel wishes (kernel-configs/*.config) against a real kernel');
  recipeOptions(
    k
      .command('check')
      .description('report, for every wish, whether the kernel honours it: against a source tree (merge_config.sh + olddefconfig) or a plain .config')
      .argument('[fragments...]', 'fragment names or paths (default: the recipe\'s kernel.fragments)')
      .option('--source <dir>', 'kernel source tree (e.g. the extracted Debian linux-source-6.12)')
      .option('--config <file>', 'a .config (plain, .gz or .xz): the stock kernel to check, or with --source the base to merge onto')
      .option('--strict', 'exit 1 if any wish is not met')
      .option('--json', 'print JSON'),
  ).action(async (frags: string[], o: { recipe: string; set: string[]; source?: string; config?: string; strict?: boolean; json?: boolean }) => {
    const names = frags.length ? frags : (await loadRecipe(o.recipe, { sets: o.set })).kernel.fragments;
    if (!names.length) throw new UserError('no fragments: name some (see kernel-configs/) or set kernel.fragments in the recipe', 2);
    const spinner = !o.json && o.source && process.stderr.isTTY ? ora({ text: 'merge_config.sh + make olddefconfig', stream: process.stderr }).start() : undefined;
    const res = await kernelCheck(await loadFragments(names), { source: o.source, config: o.config }).finally(() => spinner?.stop());
    if (o.json) out(JSON.stringify(res, null, 2));
    else {
      const rows = res.results.map((r) => [`CONFIG_${r.symbol}=${r.value}`, r.status, r.actual ?? '-', r.detail + (r.hint ? ` (${r.hint})` : ''), r.fragment]);
      const w = [0, 1, 2].map((i) => Math.max(...rows.map((row) => row[i]!.length), ['wish', 'status', 'kernel'][i]!.length));
      out(`${'wish'.padEnd(w[0]!)}  ${'status'.padEnd(w[1]!)}  ${'kernel'.padEnd(w[2]!)}  why`);
      for (const r of rows) out(`${r[0]!.padEnd(w[0]!)}  ${r[1]!.padEnd(w[1]!)}  ${r[2]!.padEnd(w[2]!)}  ${r[3]}  [${r[4]}]`);
      if (res.bootArgs.length) out(`\nat boot: ${res.bootArgs.join(' ')}`);
      out(`${res.results.length - res.unmet} of ${res.results.length} wishes met${res.mode === 'config' ? ' (counting at-boot ones)' : ''}`);
    }
    if (o.strict && res.unmet > 0) process.exitCode = 1;
  });

  k.command('fetch-debian')
    .description("download and extract Debian's linux-source and linux-config packages into the cache (a real tree to check against)")
    .option('--suite <suite>', 'Debian suite', 'trixie')
    .option('--series <x.y>', 'kernel series', '6.12')
    .option('--json', 'print JSON')
    .action(async (o: { suite: string; series: string; json?: boolean }) => {
      const spinner = !o.json && process.stderr.isTTY ? ora({ text: 'fetching', stream: process.stderr }).start() : undefined;
      const res = await debianKernel({ cacheDir: defaultCacheDir(), suite: o.suite, series: o.series, progress: (s) => spinner && (spinner.text = s) }).finally(() => spinner?.stop());
      if (o.json) out(JSON.stringify(res, null, 2));
      else out(`version: ${res.version}\nsource:  ${res.source}\nconfig:  ${res.config}\nnext:    aios kernel check --source ${res.source} --config ${res.config}`);
    });

  const rt = p.command('runtime').description('aios-runtime: the model service (also runs outside the image)');
  rt.command('serve')
    .description('run aios-runtime with a config.toml until SIGTERM (gRPC on a unix socket and loopback TCP)')
    .requiredOption('-c, --config <file>', 'runtime config (/etc/aios/config.toml in the image)')
    .option('--listen <host:port>', 'TCP address (overrides runtime.listen; "" for none)')
    .option('--socket <path>', 'unix socket (overrides runtime.socket; "" for none)')
    .option('--http <host:port>', 'OpenAI-compatible HTTP API and /metrics (overrides runtime.http_listen; "" for none)')
    .action(async (o: { config: string; listen?: string; socket?: string; http?: string }) => {
      const { runDaemon } = await import('../runtime/daemon.js');
      process.exitCode = await runDaemon(o.config, { listen: o.listen, socket: o.socket, http: o.http }).catch((e: Error) => {
        throw new UserError(e.message, 1);
      });
    });

  const addrOpt = (c: Command) => c.option('-a, --address <addr>', 'runtime address: host:port or unix:/path', 'unix:/run/aios/runtime.sock');
  addRuntimeSchedulerCommands(p, rt, addrOpt);
  addrOpt(rt.command('status').description('health and loaded models of a running aios-runtime').option('--json', 'print JSON')).action(async (o: { address: string; json?: boolean }) => {
    const { connect, unary } = await import('../runtime/client.js');
    const c = connect(o.address);
    try {
      const [h, l] = await Promise.all([unary<Record<string, unknown>>(c, 'HealthCheck', {}, 5000), unary<{ models: Record<string, unknown>[] }>(c, 'ListModels', {}, 5000)]);
      if (o.json) return void out(JSON.stringify({ health: h, models: l.models }, null, 2));
      out(`${h.status} (${h.models_ready} model(s) ready, up ${Math.round(Number(h.uptime_ms) / 1000)} s)`);
      for (const m of l.models) out(`  ${String(m.name).padEnd(24)} ${String(m.level || '-').padEnd(12)} ${String(m.state).padEnd(10)} pid ${m.pid} port ${m.port} ${formatSize(Number(m.memory_bytes))} restarts ${m.restarts}${m.error ? ` error: ${m.error}` : ''}`);
    } catch (e) {
      throw new UserError(`cannot reach aios-runtime at ${o.address}: ${(e as Error).message}`, 1);
    } finally {
      c.close();
    }
  });
  for (const verb of ['load', 'unload'] as const) {
    addrOpt(rt.command(verb).description(`${verb} a model in a running aios-runtime`).argument('<name>', 'model name (a configured layer\'s model, or a new name with --path)').option('--path <file>', 'GGUF file inside the model dir (load only)')).action(
      async (name: string, o: { address: string; path?: string }) => {
        const { connect, unary } = await import('../runtime/client.js');
        const c = connect(o.address);
        try {
          const r = await unary<Record<string, unknown>>(c, verb === 'load' ? 'LoadModel' : 'UnloadModel', verb === 'load' ? { model_name: name, model_path: o.path ?? '' } : { model_name: name }, 180_000);
          out(verb === 'load' ? `${r.name}: ${r.state} (pid ${r.pid}, port ${r.port})` : String(r.message));
        } catch (e) {
          throw new UserError(`${verb} ${name}: ${(e as Error).message}`, 1);
        } finally {
          c.close();
        }
      },
    );
  }
  addrOpt(
    rt
      .command('infer')
      .description('send a prompt and stream the answer to the terminal')
      .argument('<prompt>')
      .option('-m, --model <name>', 'model name, or "auto"', '')
      .option('-l, --level <level>', 'operational | tactical | strategic', '')
      .option('-n, --max-tokens <n>', 'most tokens to generate', (v) => Number(v), 256)
      .option('-t, --temperature <t>', 'sampling temperature', (v) => Number(v), 0.7)
      .option('--system <text>', 'system prompt', '')
      .option('--grammar <gbnf>', 'GBNF grammar for the answer', ''),
  ).action(async (prompt: string, o: { address: string; model: string; level: string; maxTokens: number; temperature: number; system: string; grammar: string }) => {
    const { connect, streamInfer } = await import('../runtime/client.js');
    const c = connect(o.address);
    try {
      const last = await streamInfer(c, { prompt, model: o.model, intelligence_level: o.level, max_tokens: o.maxTokens, temperature: o.temperature, system_prompt: o.system, grammar: o.grammar }, (t) => process.stdout.write(t));
      process.stdout.write('\n');
      process.stderr.write(`[${last.model_used}, ${last.tokens_used} tokens]\n`);
    } catch (e) {
      throw new UserError(`infer: ${(e as Error).message}`, 1);
    } finally {
      c.close();
    }
  });

  p.command('qemu-test')
    .description('boot an image in QEMU (UEFI) and check it reaches multi-user with no failed units')
    .argument('<image>', 'disk image (.raw) or live ISO (.iso)')
    .addOption(new Option('--as <media>', 'attach it as a virtio disk, a CD-ROM or a USB stick (default: cdrom for an ISO, else disk)').choices(['disk', 'cdrom', 'usb']))
    .option('--timeout <seconds>', 'give up after this long', (v) => Number(v), 300)
    .option('--memory <MiB>', 'guest memory', '2048')
    .option('--cpus <n>', 'guest CPUs', (v) => Number(v), 2)
    .addOption(new Option('--accel <accel>', 'force an accelerator (default: KVM if a probe guest runs, else TCG)').choices(['kvm', 'tcg']))
    .option('--cpu <model>', 'QEMU CPU model (default: host with KVM, max with TCG)')
    .option('--serial-log <file>', 'where to keep the serial log (default: <image>.serial.log)')
    .option('--json', 'print the result as JSON')
    .action(async (image: string, o: { as?: Media; timeout: number; memory: string; cpus: number; accel?: 'kvm' | 'tcg'; cpu?: string; serialLog?: string; json?: boolean }) => {
      const spinner = o.json || !process.stderr.isTTY ? undefined : ora({ text: `booting ${image}`, stream: process.stderr }).start();
      const t0 = Date.now();
      const tick = spinner ? setInterval(() => (spinner.text = `booting ${image} (${((Date.now() - t0) / 1000).toFixed(0)} s)`), 1000) : undefined;
      const res = await qemuTest(image, {
        media: o.as,
        timeout: o.timeout,
        memory: o.memory,
        cpus: o.cpus,
        accel: o.accel,
        cpu: o.cpu,
        serialLog: o.serialLog,
        onProgress: (l) => {
          if (spinner) spinner.text = l;
          else if (!o.json) process.stderr.write(`${l}\n`);
        },
      }).finally(() => clearInterval(tick));
      if (o.json) out(JSON.stringify(res, null, 2));
      else {
        if (res.ok) spinner?.succeed(`boot check passed (${res.accel})`);
        else spinner?.fail(`boot check failed: ${res.reason}`);
        const g = res.guest;
        out(`${res.ok ? 'PASS' : 'FAIL'}: ${res.image} (${res.media}, ${res.accel})${res.reason ? `: ${res.reason}` : ''}`);
        if (g.kernel) out(`kernel:      ${g.kernel}`);
        if (g.timing) out(`guest:       ${g.timing}`);
        if (g.multiUser !== undefined) out(`multi-user:  ${g.multiUser.toFixed(1)} s after kernel start`);
        out(`host:        ${res.hostSeconds.toFixed(1)} s from QEMU start to power-off`);
        if (g.state) out(`state:       ${g.state}; failed units: ${g.failedUnits.length ? g.failedUnits.join(', ') : 'none'}`);
        if (g.thp) out(`THP:         ${g.thp}`);
        if (g.cpuFlags) out(`guest CPU:   ${g.cpuFlags.join(' ')}`);
        if (g.llamaVersion) out(`llama.cpp:   ${g.llamaVersion}`);
        for (const mm of g.models) out(`model:       ${mm.file} (${mm.magic} v${mm.version}, ${formatSize(mm.bytes)}, sha256 ${mm.sha256.slice(0, 16)}…)`);
        if (g.swap !== undefined) out(`swap:        ${g.swap || 'none'}`);
        if (res.runtime) {
          const r = res.runtime;
          out(`aios-runtime: ${r.ok ? 'answered' : 'FAILED'} "${r.prompt}" -> "${r.text ?? ''}"${r.latencyMs !== undefined ? ` in ${r.latencyMs} ms` : ''} via ${r.address}${r.readySeconds !== undefined ? `; ready ${r.readySeconds} s after kernel start` : ''}${r.error ? ` (${r.error})` : ''}`);
        }
        if (res.kernelWishes.length) {
          out('kernel wishes, live in the guest:');
          for (const w of res.kernelWishes) out(`  ${w.live.padEnd(7)} CONFIG_${w.symbol}=${w.value}  ${w.evidence}`);
        }
        out(`serial log:  ${res.serialLog}`);
      }
      if (!res.ok) process.exitCode = 1;
    });

  p.command('qemu')
    .description('boot an image in QEMU with its serial console on this terminal (Ctrl-A X quits; changes are discarded)')
    .argument('<image>', 'disk image (.raw)')
    .option('--memory <MiB>', 'guest memory', '2048')
    .option('--cpus <n>', 'guest CPUs', (v) => Number(v), 2)
    .option('--persist', 'write guest changes to the image instead of discarding them')
    .action(async (image: string, o: { memory: string; cpus: number; persist?: boolean }) => {
      process.exitCode = await qemuInteractive(image, { memory: o.memory, cpus: o.cpus, snapshot: !o.persist });
    });

  p.command('flash')
    .description('write a disk image (.raw, .raw.zst, .raw.xz) to a whole disk: safety checks, typed confirmation, progress, read-back verification')
    .argument('<image>', 'disk image, e.g. out/aios-default.raw (or .raw.zst / .raw.xz, decompressed on the fly), or a live ISO (out/<name>.iso is hybrid: it boots from a USB stick)')
    .argument('<device>', 'whole disk, e.g. /dev/sdb (not a partition, not mounted, not the running system\'s disk)')
    .option('-y, --yes', 'do not ask to type the device name back (every safety check still applies)')
    .option('--to-file', 'the target is a regular file, created at the image size if missing (for testing)')
    .option('--grow-root', 'grow the root partition, and an ext4 filesystem on it, to the end of the disk')
    .option('--json', 'print the result as JSON, no progress (needs --yes, or the name on stdin)')
    .action(async (image: string, device: string, o: { yes?: boolean; toFile?: boolean; growRoot?: boolean; json?: boolean }) => {
      const err = (s: string) => process.stderr.write(s.endsWith('\n') ? s : s + '\n');
      const tty = process.stderr.isTTY;
      let lastLine = 0;
      const onProgress = (pr: Progress) => {
        const now = Date.now();
        const end = pr.done === pr.total;
        if (!tty && !end && now - lastLine < 5000) return;
        lastLine = now;
        const pct = pr.total ? Math.floor((100 * pr.done) / pr.total) : 100;
        const line = `${pr.phase === 'write' ? 'writing ' : 'verifying'} ${formatSize(pr.done).padStart(10)} / ${formatSize(pr.total)}  ${String(pct).padStart(3)}%  ${formatSize(pr.bytesPerSecond)}/s  ETA ${Math.ceil(pr.etaSeconds)} s`;
        process.stderr.write(tty ? `\r${line.padEnd(79)}${end ? '\n' : ''}` : `${line}\n`);
      };
      const res = await flash({
        image,
        target: device,
        toFile: o.toFile,
        yes: o.yes,
        growRoot: o.growRoot,
        onProgress: o.json ? undefined : onProgress,
        onNote: o.json ? undefined : (s) => err(`note: ${s}`),
        confirm: async (img, t) => {
          err(`image:  ${img.path} (${img.format}, ${formatSize(img.size)}, ${img.size} bytes)`);
          err(`target: ${describeTarget(t).replace(/\n/g, '\n        ')}`);
          err(`EVERYTHING ON ${t.path} WILL BE OVERWRITTEN.`);
          process.stderr.write(`Type ${t.path} to confirm: `);
          const { createInterface } = await import('node:readline');
          const rl = createInterface({ input: process.stdin });
          const answer = await new Promise<string>((resolve) => {
            rl.once('line', resolve);
            rl.once('close', () => resolve(''));
          });
          rl.close();
          return confirmationMatches(answer, t);
        },
      });
      if (o.json) out(JSON.stringify(res, null, 2));
      else {
        out(`wrote    ${formatSize(res.write.bytes)} to ${res.target.path} in ${res.write.seconds.toFixed(1)} s (${formatSize(res.write.bytesPerSecond)}/s)`);
        out(`verified ${formatSize(res.verify.bytes)} in ${res.verify.seconds.toFixed(1)} s (${formatSize(res.verify.bytesPerSecond)}/s), sha256 ${res.verify.targetSha256}`);
        out(`root:    ${res.root.note}`);
      }
    });

  const d = p.command('docs').description('generate documentation');
  d.command('recipe')
    .description('print the recipe reference (Markdown), generated from the schema')
    .action(() => {
      out(recipeReference());
    });

  return p;
}

export async function main(argv: string[]): Promise<number> {
  try {
    await program().parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    await cleanupAll();
    if (e instanceof UserError) {
      process.stderr.write(`aios: ${e.message}\n${e.hint ? `hint: ${e.hint}\n` : ''}`);
      return e.exitCode;
    }
    if (e instanceof CommandError) {
      process.stderr.write(`aios: ${e.message}\n`);
      return 1;
    }
    process.stderr.write(`aios: ${(e as Error)?.stack ?? String(e)}\n`);
    return 1;
  }
}
