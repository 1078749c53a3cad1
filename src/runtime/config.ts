/**
 * Schema of /etc/aios/config.toml (seed 001). aios-runtime reads the file with this schema, and the
 * image build validates the file it writes with the same one. Imports nothing from the build side.
 */
import { z } from 'zod';

const ModelLayer = z.strictObject({
  name: z.string().describe('GGUF file name in model_dir'),
  always_loaded: z.boolean().default(false),
  load_on_demand: z.boolean().default(true),
  max_tokens: z.number().int().positive().default(512),
  temperature: z.number().min(0).max(2).default(0.2),
  unload_after_idle: z.string().regex(/^\d+(ms|s|m|h)$/).default('5m'),
});

export const RuntimeConfigSchema = z.strictObject({
  system: z
    .strictObject({
      hostname: z.string().default('aios'),
      log_level: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
    })
    .prefault({}),
  models: z
    .strictObject({
      runtime: z.literal('llama-cpp').default('llama-cpp'),
      model_dir: z.string().default('/var/lib/aios/models'),
      operational: ModelLayer.optional(),
      tactical: ModelLayer.optional(),
    })
    .prefault({}),
});

export type RuntimeConfig = z.output<typeof RuntimeConfigSchema>;
