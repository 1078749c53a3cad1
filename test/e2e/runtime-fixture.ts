/**
 * What the runtime's end-to-end tests share: llama.cpp from the default recipe's cached stage (built
 * on first use) and synthesized models (real vocabulary, random weights) in a directory of the test's.
 */
import { join } from 'node:path';
import { buildLlamaStage } from '../../src/build/index.js';
import { synthModel, type Quant } from '../../src/models/synth.js';

export interface RuntimeFixture {
  llamaServer: string;
  binDir: string;
  tools: { ggufPy: string; vocab: string; quantize: string };
}

/** llama.cpp plus `tiny.gguf` (f32) in `dir`, and any other models asked for (file → shape:quant). */
export async function runtimeFixture(dir: string, more: Record<string, `${string}:${Quant}`> = {}): Promise<RuntimeFixture> {
  const llama = await buildLlamaStage({ recipe: 'default', renderer: 'silent' });
  const tools = { ggufPy: join(llama.shareDir, 'gguf-py'), vocab: join(llama.shareDir, 'ggml-vocab-llama-spm.gguf'), quantize: join(llama.binDir, 'llama-quantize') };
  for (const [file, spec] of Object.entries({ 'tiny.gguf': 'tiny:f32', ...more })) {
    const [shape, quant] = spec.split(':') as [string, Quant];
    await synthModel({ shape, quant, out: join(dir, file), tools });
  }
  return { llamaServer: join(llama.binDir, 'llama-server'), binDir: llama.binDir, tools };
}
