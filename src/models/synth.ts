/**
 * Synthesized GGUF models: random weights, a real tokenizer vocabulary, a real model's shape.
 * Written by scripts/synth-gguf.py with llama.cpp's own gguf-py; quantized with llama-quantize.
 */
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../util/exec.js';
import { PKG_ROOT } from '../util/paths.js';
import { UserError } from '../util/errors.js';

export interface Shape {
  embd: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ff: number;
  ctx: number;
  description: string;
}

export const SHAPES: Record<string, Shape> = {
  tiny: { embd: 128, layers: 2, heads: 4, kvHeads: 4, ff: 384, ctx: 2048, description: '~35 MB f32: tests and smoke checks' },
  small: { embd: 512, layers: 4, heads: 8, kvHeads: 4, ff: 1408, ctx: 2048, description: '~90 MB f32' },
  'tinyllama-1.1b': { embd: 2048, layers: 22, heads: 32, kvHeads: 4, ff: 5632, ctx: 2048, description: "TinyLlama 1.1B's shape (Q4_K_M ~640 MB)" },
  'mistral-7b': { embd: 4096, layers: 32, heads: 32, kvHeads: 8, ff: 14336, ctx: 32768, description: "Mistral 7B's shape (Q4_K_M ~4.1 GB)" },
};

/** synth-gguf.py's arguments for a shape's dimensions (the GPU check's pack writes them for its script, too). */
export function shapeArgs(s: Shape): string[] {
  return ['--n-embd', String(s.embd), '--n-layer', String(s.layers), '--n-head', String(s.heads), '--n-head-kv', String(s.kvHeads), '--n-ff', String(s.ff), '--ctx', String(s.ctx)];
}

export const QUANTS = ['f32', 'f16', 'Q8_0', 'Q6_K', 'Q5_K_M', 'Q4_K_M', 'Q4_0'] as const;
export type Quant = (typeof QUANTS)[number];

export interface SynthTools {
  /** llama.cpp's gguf-py directory. */
  ggufPy: string;
  /** A vocab-only GGUF with tokenizer metadata. */
  vocab: string;
  /** llama-quantize, for quantized outputs. */
  quantize?: string;
  python?: string;
}

export async function synthModel(o: { shape: string; quant: Quant; out: string; name?: string; seed?: number; tools: SynthTools; log?: string; progress?: (s: string) => void }): Promise<void> {
  const s = SHAPES[o.shape];
  if (!s) throw new UserError(`unknown shape "${o.shape}" (known: ${Object.keys(SHAPES).join(', ')})`, 2);
  const float = o.quant === 'f32' || o.quant === 'f16';
  if (!float && !o.tools.quantize) throw new UserError(`--quant ${o.quant} needs llama-quantize (build llama.cpp first)`, 3);
  const tmp = `${o.out}.tmp-${process.pid}`;
  const f16 = `${o.out}.f16-${process.pid}`;
  try {
    o.progress?.(`writing ${o.shape} with random weights`);
    await run(
      [
        o.tools.python ?? '/usr/bin/python3',
        join(PKG_ROOT, 'scripts/synth-gguf.py'),
        '--gguf-py', o.tools.ggufPy,
        '--vocab', o.tools.vocab,
        '--out', float ? tmp : f16,
        '--name', o.name ?? `aios-synth-${o.shape}`,
        ...shapeArgs(s),
        '--dtype', o.quant === 'f32' ? 'f32' : 'f16',
        '--seed', String(o.seed ?? 0),
      ],
      { log: o.log },
    );
    if (!float) {
      o.progress?.(`llama-quantize ${o.quant}`);
      await run([o.tools.quantize!, f16, tmp, o.quant], { log: o.log });
    }
    await rename(tmp, o.out);
  } finally {
    await rm(tmp, { force: true });
    await rm(f16, { force: true });
  }
}
