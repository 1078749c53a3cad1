/**
 * Defaults of the config keys that decide how the operational model's llama-server is started.
 * The schema (config.ts) takes them from here, and so does the early start (entry.ts), which runs
 * before the schema is loaded: one source for both. Plus `ms()`, which both need too.
 */
export const DEFAULTS = {
  llama_server: '/usr/bin/llama-server',
  model_dir: '/var/lib/aios/models',
  ctx_size: 2048,
  threads: 0,
  gpu_layers: 0,
  parallel: 2,
  mmap: true,
} as const;

/** "10s" → milliseconds (the schema has checked the format). */
export function ms(d: string): number {
  const m = /^(\d+)(ms|s|m|h)$/.exec(d)!;
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
}
