/** `aios models list|pull|verify|rm|inspect|synth|synth-lora`: the models dir on this host, GGUF headers, synthesized test models. */
import { Option, type Command } from 'commander';
import { join } from 'node:path';
import ora from 'ora';
import { buildLlamaStage } from '../build/index.js';
import { listModels, pullModel, removeModel, verifyModels } from '../models/store.js';
import { inspectModel, readGguf } from '../models/gguf.js';
import { adapterProblem } from '../models/lora.js';
import { synthLora } from '../models/synth-lora.js';
import { QUANTS, SHAPES, synthModel, type Quant } from '../models/synth.js';
import { formatSize } from '../util/size.js';
import { defaultCacheDir } from '../util/paths.js';
import { UserError } from '../util/errors.js';
import { out, recipeOptions } from './common.js';

export function registerModels(p: Command): void {
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
        out(`${r.present ? '*' : ' '} ${r.id.padEnd(34)} ${r.level.padEnd(12)} ${r.quantization.padEnd(7)} ctx ${String(r.context_length).padEnd(6)} ${r.size ? formatSize(r.size).padEnd(10) : 'size ?'.padEnd(10)} ${r.license}${r.adapters.length ? `  adapters: ${r.adapters.join(', ')}` : ''}${r.downloadable ? '' : '  (no checksum yet: pull by URL with --sha256)'}${r.verified ? '' : '  [checksum not verified here]'}`);
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
      else {
        out(`${res.alreadyPresent ? 'already present' : 'downloaded'}: ${res.path} (${formatSize(res.bytes)}${res.resumedFrom ? `, resumed from ${formatSize(res.resumedFrom)}` : ''})`);
        for (const a of res.adapters ?? []) out(`${a.alreadyPresent ? 'already present' : 'downloaded'}: ${a.path} (${formatSize(a.bytes)}, LoRA adapter)`);
      }
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
  recipeOptions(
    m
      .command('synth-lora')
      .description('write a LoRA adapter GGUF with random weights for a base model (general.type = adapter, adapter.type = lora, a .lora_a/.lora_b pair per attention and feed-forward weight); checked against the base the way llama.cpp checks it')
      .requiredOption('--base <gguf>', 'the base model')
      .requiredOption('--out <file>', 'output .gguf file')
      .option('--rank <n>', 'LoRA rank', (v) => Number(v), 8)
      .option('--alpha <n>', 'adapter.lora.alpha (default: the rank, i.e. scale 1)', (v) => Number(v))
      .option('--std <x>', 'standard deviation of the random A and B entries', (v) => Number(v), 0.05)
      .option('--zero-b', 'every lora_b zero: applying the adapter changes nothing (a freshly initialised LoRA)')
      .option('--seed <n>', 'random seed', (v) => Number(v), 1),
  ).action(async (o: { base: string; out: string; rank: number; alpha?: number; std: number; zeroB?: boolean; seed: number; recipe: string; set: string[] }) => {
    const llama = await buildLlamaStage({ recipe: o.recipe, sets: o.set, renderer: 'silent' });
    await synthLora({ base: o.base, out: o.out, rank: o.rank, alpha: o.alpha, std: o.std, zeroB: o.zeroB, seed: o.seed, ggufPy: join(llama.shareDir, 'gguf-py') });
    const problem = adapterProblem(await readGguf(o.out), await readGguf(o.base));
    if (problem) throw new UserError(`${o.out}: llama.cpp would refuse it for ${o.base}: ${problem}`, 1);
    const g = await readGguf(o.out);
    out(`${o.out}: LoRA for ${g.metadata['general.architecture']}, ${g.tensors.length / 2} pairs, rank ${o.rank}, alpha ${g.metadata['adapter.lora.alpha']}${o.zeroB ? ', lora_b = 0' : ''}`);
  });
}
