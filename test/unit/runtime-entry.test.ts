/** The early start (src/runtime/entry.ts): the raw-TOML profile gives the same llama-server command line as the validated config. */
import { describe, expect, it } from 'vitest';
import { earlyProfile } from '../../src/runtime/entry.js';
import { launchArgs } from '../../src/runtime/launch.js';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { Router } from '../../src/runtime/router.js';

const validated = (raw: object) => new Router(RuntimeConfigSchema.parse(raw), () => [], () => undefined).profile('operational')!;

describe('early start of the operational model', () => {
  for (const [what, raw] of [
    ['defaults only', { models: { operational: { name: 'tiny.gguf' } } }],
    ['everything explicit', { runtime: { llama_server: '/opt/ls' }, models: { model_dir: '/m', operational: { name: 'x.gguf', ctx_size: 512, threads: 3, gpu_layers: -1, parallel: 4, mmap: false } } }],
    ['LoRA adapters', { models: { operational: { name: 'tiny.gguf', adapters: [{ name: 'a', file: 'a.gguf', description: 'x' }, { name: 'b', file: 'b.gguf', scale: 0.5 }] } } }],
  ] as const) {
    it(`${what}: the same command line as the validated config`, () => {
      const e = earlyProfile(raw)!;
      expect(e).toBeDefined();
      expect(launchArgs(e.profile, 1234)).toEqual(launchArgs(validated(raw), 1234));
      expect(e.binary).toBe(RuntimeConfigSchema.parse(raw).runtime.llama_server);
    });
  }
  it('gives up on what it cannot read (the daemon reports it)', () => {
    expect(earlyProfile({})).toBeUndefined();
    expect(earlyProfile({ models: { operational: { name: 'x.gguf', ctx_size: 'big' } } })).toBeUndefined();
    expect(earlyProfile('nonsense')).toBeUndefined();
  });
});
