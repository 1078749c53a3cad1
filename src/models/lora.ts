/**
 * What llama.cpp's LoRA loader (src/llama-adapter.cpp, llama_adapter_lora_init) checks in an adapter
 * GGUF against its base model, as a pure function of both files' headers: used by
 * `aios models synth-lora` on what it wrote and by aios-runtime before a child is started with it.
 */
import type { GgufFile } from './gguf.js';

const str = (g: GgufFile, k: string): string | undefined => (typeof g.metadata[k] === 'string' ? (g.metadata[k] as string) : undefined);

/**
 * Why llama.cpp would refuse this adapter for this base (undefined = it fits): the checks of
 * llama_adapter_lora_init (general.type, architecture, adapter.type, alpha, every tensor a complete
 * lora_a/lora_b pair for a base tensor of matching shape).
 */
export function adapterProblem(adapter: GgufFile, base: GgufFile): string | undefined {
  const type = str(adapter, 'general.type');
  if (type !== 'adapter') return `general.type is ${type === undefined ? 'missing' : `"${type}"`}, not "adapter" (a model, not a LoRA adapter?)`;
  const arch = str(adapter, 'general.architecture');
  const baseArch = str(base, 'general.architecture');
  if (arch !== baseArch) return `it is for architecture "${arch}", the base model is "${baseArch}"`;
  const at = str(adapter, 'adapter.type');
  if (at !== 'lora') return `adapter.type is ${at === undefined ? 'missing' : `"${at}"`}, not "lora"`;
  if (typeof adapter.metadata['adapter.lora.alpha'] !== 'number') return 'adapter.lora.alpha is missing';
  const baseT = new Map(base.tensors.map((t) => [t.name, t.dims]));
  const pairs = new Map<string, { a?: number[]; b?: number[] }>();
  for (const t of adapter.tensors) {
    const m = /^(.*)\.lora_([ab])$/.exec(t.name);
    if (!m) return `tensor "${t.name}" is not a .lora_a/.lora_b tensor`;
    const p = pairs.get(m[1]!) ?? {};
    p[m[2] as 'a' | 'b'] = t.dims;
    pairs.set(m[1]!, p);
  }
  if (!pairs.size) return 'it has no LoRA tensors';
  for (const [name, { a, b }] of pairs) {
    if (!a || !b) return `the LoRA pair for "${name}" is missing its lora_${a ? 'b' : 'a'}`;
    const w = baseT.get(name);
    if (!w) return `"${name}" does not exist in the base model`;
    if (name === 'token_embd.weight') {
      if (w[0] !== b[1] || w[1] !== a[1]) return `"${name}" has shape [${w}] but the pair gives [${b[1]}, ${a[1]}]`;
    } else {
      if (w[0] !== a[0] || w[1] !== b[1]) return `"${name}" has shape [${w}] in the base model but [${a[0]}, ${b[1]}] in the adapter`;
      if (a[1] !== b[0]) return `"${name}": lora_a's rank ${a[1]} differs from lora_b's ${b[0]}`;
    }
  }
  return undefined;
}

