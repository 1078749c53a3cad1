/**
 * Schema of /etc/aios/config.toml. aios-runtime reads the file with this schema, and the
 * image build validates the file it writes with the same one. Imports nothing from the build side.
 */
import { readFile } from 'node:fs/promises';
import { parse } from 'smol-toml';
import { z } from 'zod';
import { DEFAULTS } from './defaults.js';

const duration = z.string().regex(/^\d+(ms|s|m|h)$/, { message: 'must be a duration such as 500ms, 10s, 5m' });
const size = z.string().regex(/^\d+(\.\d+)?[KMGT]?$/, { message: 'must be a size such as 512M, 6G or a number of bytes' });

export { ms } from './defaults.js';

const Probe = z.strictObject({
  prompt: z.string().default('Respond with OK if you are working.'),
  /** GBNF grammar constraining the answer (a model with random weights cannot say OK unaided). */
  grammar: z.string().optional(),
  /** Regular expression the answer must match. */
  expect: z.string().default('OK'),
});

const ModelLayer = z.strictObject({
  name: z.string().describe('GGUF file name in model_dir'),
  ctx_size: z.number().int().min(64).default(DEFAULTS.ctx_size),
  threads: z.number().int().min(0).default(DEFAULTS.threads).describe('0 = physical cores'),
  gpu_layers: z.number().int().min(-1).default(DEFAULTS.gpu_layers),
  parallel: z.number().int().min(1).max(64).default(DEFAULTS.parallel).describe('llama-server slots (concurrent requests per model)'),
  mmap: z.boolean().default(DEFAULTS.mmap),
  probe: Probe.prefault({ grammar: 'root ::= "OK"' }),
  always_loaded: z.boolean().default(false).describe('loaded when the runtime starts and pinned (never evicted or unloaded for idleness); the operational model always is'),
  load_on_demand: z.boolean().default(true).describe('false: a request for this model while it is not loaded fails (FAILED_PRECONDITION) instead of loading it; load it with `aios runtime load`'),
  max_tokens: z.number().int().positive().default(512).describe('tokens generated when a request sets none'),
  max_tokens_limit: z.number().int().positive().optional().describe('most tokens a request may ask for (more is refused: INVALID_ARGUMENT / HTTP 400); default: ctx_size'),
  temperature: z.number().min(0).max(2).default(0.2).describe('temperature when a request sets none'),
  unload_after_idle: z.string().regex(/^\d+(ms|s|m|h)$/).default('5m'),
});

export const RuntimeConfigSchema = z.strictObject({
  runtime: z
    .strictObject({
      llama_server: z.string().default(DEFAULTS.llama_server),
      socket: z.string().default('/run/aios/runtime.sock').describe('unix socket (mode 0660); "" = none'),
      listen: z.string().default('127.0.0.1:50051').describe('TCP host:port; "" = none. Anything but loopback must be set explicitly'),
      http_listen: z.string().default('').describe('OpenAI-compatible HTTP API and /metrics, host:port (the image: 127.0.0.1:8080); "" = none'),
      health_interval: duration.default('10s'),
      load_timeout: duration.default('120s'),
      request_timeout: duration.default('120s'),
      max_restarts: z.number().int().min(0).default(5).describe('crashes within 5 minutes before a model is marked failed'),
      // Scheduling: priority queues, memory budget, auto-install.
      max_queue_per_model: z.number().int().min(1).default(64).describe('requests waiting per model beyond its slots; more are refused at once (RESOURCE_EXHAUSTED / 429)'),
      max_queue_total: z.number().int().min(1).default(256).describe('requests waiting over all models'),
      queue_aging: duration.default('10s').describe('every this long in the queue raises a request\'s priority by 10 points (batch 50 reaches realtime 90 after 4 periods)'),
      memory_budget: size.or(z.literal('auto')).default('auto').describe('RAM for models; "auto" = total memory (or the service cgroup\'s MemoryHigh/MemoryMax, if lower) minus memory_reserve'),
      memory_reserve: size.default('512M').describe('left to the OS and the daemon when memory_budget = "auto"'),
      vram_budget: size.or(z.literal('auto')).default('auto').describe('GPU memory for models with gpu_layers ≠ 0; "auto" = the first NVIDIA GPU\'s memory (nvidia-smi) minus 5 %, none found = not budgeted'),
      auto_install: z.boolean().default(false).describe('download a catalog model (checked sha256) on its first request'),
      catalog: z.string().default('').describe('model catalog TOML; "" = the catalog shipped beside the runtime'),
      unload_after_idle: duration.default('5m').describe('idle timeout of catalog models loaded by a request; configured layers use their own; models loaded with LoadModel stay until unloaded or evicted'),
    })
    .prefault({}),
  system: z
    .strictObject({
      hostname: z.string().default('aios'),
      log_level: z.enum(['debug', 'info', 'warn', 'error']).default('info').describe('lowest level aios-runtime logs (to the journal under systemd, with syslog priorities)'),
    })
    .prefault({}),
  models: z
    .strictObject({
      runtime: z.literal('llama-cpp').default('llama-cpp'),
      model_dir: z.string().default(DEFAULTS.model_dir),
      operational: ModelLayer.optional(),
      tactical: ModelLayer.optional(),
    })
    // A model is named by its file (clients ask for "tiny" or "tiny.gguf"): two layers of one file
    // would be one name for two launch profiles, so one would silently replace the other.
    .superRefine((m, ctx) => {
      const stem = (n: string) => n.replace(/\.gguf$/, '');
      if (m.operational && m.tactical && stem(m.operational.name) === stem(m.tactical.name)) {
        ctx.addIssue({
          code: 'custom',
          path: ['tactical', 'name'],
          message: `"${m.tactical.name}" is also [models.operational]'s file: a model is named by its file, so each layer needs its own (copy or link the file under another name to serve it with two settings)`,
        });
      }
    })
    .prefault({}),
});

export type RuntimeConfig = z.output<typeof RuntimeConfigSchema>;

/** Reads and validates a config.toml; errors name the file and every key path that is wrong. */
export async function readRuntimeConfig(file: string): Promise<RuntimeConfig> {
  let raw: unknown;
  try {
    raw = parse(await readFile(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: ${(e as Error).message.split('\n')[0]}`);
  }
  const r = RuntimeConfigSchema.safeParse(raw);
  if (!r.success) throw new Error(`${file}: ` + r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  return r.data;
}
