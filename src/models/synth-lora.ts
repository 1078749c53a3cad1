/**
 * Synthesized LoRA adapters for a GGUF base model (`aios models synth-lora`): random A and B (or a
 * zero B, which leaves the base's output unchanged), written by scripts/synth-lora.py with
 * llama.cpp's gguf-py in the format llama.cpp's adapter loader checks (src/runtime/adapters.ts
 * checks a file the same way before a child is started with it).
 */
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../util/exec.js';
import { PKG_ROOT } from '../util/paths.js';
import { UserError } from '../util/errors.js';

export interface SynthLoraOptions {
  base: string;
  out: string;
  rank?: number;
  /** adapter.lora.alpha; default = rank (llama.cpp scales B·A by alpha / rank). */
  alpha?: number;
  seed?: number;
  /** Standard deviation of A's and B's entries. */
  std?: number;
  /** Every lora_b zero: applying the adapter changes nothing. */
  zeroB?: boolean;
  /** Another general.architecture than the base's (a deliberately wrong adapter, for tests). */
  arch?: string;
  ggufPy: string;
  python?: string;
  log?: string;
}

export async function synthLora(o: SynthLoraOptions): Promise<void> {
  const rank = o.rank ?? 8;
  if (!Number.isInteger(rank) || rank < 1) throw new UserError(`--rank must be a positive integer (got ${o.rank})`, 2);
  if (o.std !== undefined && !(o.std >= 0)) throw new UserError(`--std must be a number ≥ 0 (got ${o.std})`, 2);
  const tmp = `${o.out}.tmp-${process.pid}`;
  try {
    await run(
      [
        o.python ?? '/usr/bin/python3',
        join(PKG_ROOT, 'scripts/synth-lora.py'),
        '--gguf-py', o.ggufPy,
        '--base', o.base,
        '--out', tmp,
        '--rank', String(rank),
        '--alpha', String(o.alpha ?? 0),
        '--seed', String(o.seed ?? 1),
        ...(o.std !== undefined ? ['--std', String(o.std)] : []),
        ...(o.zeroB ? ['--zero-b'] : []),
        ...(o.arch ? ['--arch', o.arch] : []),
      ],
      { log: o.log },
    );
    await rename(tmp, o.out);
  } finally {
    await rm(tmp, { force: true });
  }
}
