/**
 * Adapters in the service over fake llama-server children (test/fake-child.ts), through the real gRPC
 * client: the `lora` field every request sends (never empty), an adapter file that does not fit its
 * base (left out at load, a request naming it refused with the reason), and Reload (the config file
 * read again: which children restart, which do not and why, bad input).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { stringify } from 'smol-toml';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { startDaemon, type Daemon } from '../../src/runtime/daemon.js';
import { connect, unary, type RuntimeClient } from '../../src/runtime/client.js';
import { Code } from '../../src/runtime/errors.js';
import { FakeLauncher } from '../fake-child.js';
import { writeTestGguf } from '../gguf-writer.js';
import { tmp } from '../helpers.js';

const dir = tmp('aios-reload-');
writeTestGguf(join(dir, 'op.gguf'));
writeTestGguf(join(dir, 'tac.gguf'));
// A model file where an adapter should be: llama.cpp would refuse it (general.type is not "adapter").
writeTestGguf(join(dir, 'not-an-adapter.gguf'));
const file = join(dir, 'config.toml');
const failure = (p: Promise<unknown>) => p.then(() => undefined, (e: grpc.ServiceError) => e);

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const raw: any = {
  runtime: { llama_server: '/nonexistent', socket: '', listen: '127.0.0.1:0', health_interval: '1s', request_timeout: '10s' },
  models: {
    model_dir: dir,
    operational: { name: 'op.gguf', ctx_size: 256, adapters: [{ name: 'bad', file: 'not-an-adapter.gguf' }] },
    tactical: { name: 'tac.gguf', ctx_size: 256, adapters: [] },
  },
};

describe('adapters over fake children: the lora field, refusal at load, Reload', () => {
  let d: Daemon;
  let launcher: FakeLauncher; // it records the profiles it started
  let g: RuntimeClient;
  beforeAll(async () => {
    writeFileSync(file, stringify(raw));
    launcher = new FakeLauncher();
    d = await startDaemon(RuntimeConfigSchema.parse(raw), { log: () => {}, service: { launcher, configFile: file, supervisor: { child: { backoffMs: () => 1, pollMs: 5 } } } });
    g = connect(`127.0.0.1:${d.listening.tcpPort}`);
  });
  afterAll(async () => {
    g?.close();
    await d?.stop();
  });

  it('an adapter file that does not fit is left out at load; a request naming it gets the reason; one naming none sends no lora to a child without adapters', async () => {
    expect(launcher.profiles[0]!.name).toBe('op');
    expect(launcher.profiles[0]!.adapters).toEqual([]);
    const e = await failure(unary(g, 'Infer', { prompt: 'hi', adapters: [{ name: 'bad' }] } as never));
    expect(e?.code).toBe(Code.FAILED_PRECONDITION);
    expect(e?.details).toMatch(/adapters: op was started without adapters \(.*not-an-adapter\.gguf: general\.type is missing, not "adapter"/);
    const before = launcher.bodies.length;
    await unary(g, 'Infer', { prompt: 'hi' });
    expect(launcher.bodies[before]).not.toHaveProperty('lora');
  });

  it('Reload: unchanged lists restart nothing; a loaded child whose list changed restarts with it; one not loaded takes it at its next load', async () => {
    const same = await unary(g, 'Reload', {});
    expect(same.models).toEqual([
      { model: 'op', restarted: false, note: 'adapter files unchanged' },
      { model: 'tac', restarted: false, note: 'adapter files unchanged' },
    ]);
    const n = launcher.profiles.length;
    writeTestGguf(join(dir, 'also-not.gguf'));
    raw.models.operational.adapters = [{ name: 'bad', file: 'not-an-adapter.gguf' }, { name: 'worse', file: 'also-not.gguf' }];
    raw.models.tactical.adapters = [{ name: 't1', file: 'also-not.gguf' }];
    writeFileSync(file, stringify(raw));
    const changed = await unary(g, 'Reload', {}, 30_000);
    expect(changed.models).toEqual([
      { model: 'op', restarted: true, note: 'restarted with adapters bad, worse' },
      { model: 'tac', restarted: false, note: 'adapters now t1; not loaded, applies at its next load' },
    ]);
    expect(launcher.profiles.length).toBe(n + 1);
    expect(launcher.profiles.at(-1)!.name).toBe('op');
    // a request for the tactical model loads it with the new list (vetted: both files are refused)
    await unary(g, 'Infer', { prompt: 'hi', intelligence_level: 'tactical' });
    expect(launcher.profiles.at(-1)!.name).toBe('tac');
    const e = await failure(unary(g, 'Infer', { prompt: 'hi', intelligence_level: 'tactical', adapters: [{ name: 't1' }] } as never));
    expect(e?.details).toMatch(/also-not\.gguf: general\.type is missing/);
    // only a description or scale changed: nothing restarts
    raw.models.operational.adapters[1].description = 'now described';
    raw.models.operational.adapters[1].scale = 0.5;
    writeFileSync(file, stringify(raw));
    expect((await unary(g, 'Reload', {})).models[0]).toEqual({ model: 'op', restarted: false, note: 'adapter files unchanged' });
    expect(launcher.profiles.length).toBe(n + 2);
  });

  it('Reload: a changed model file, embedding model or any other setting is named as needing a restart; a broken file changes nothing', async () => {
    raw.models.tactical.name = 'op-copy.gguf';
    raw.models.embedding = { name: 'emb.gguf' };
    raw.runtime.request_timeout = '20s';
    raw.models.operational.ctx_size = 512;
    writeFileSync(file, stringify(raw));
    const r = await unary(g, 'Reload', {});
    expect(r.models).toContainEqual({ model: 'tac', restarted: false, note: '[models.tactical] names another file (op-copy.gguf): restart the runtime for that' });
    expect(r.models).toContainEqual({ model: 'embedding', restarted: false, note: '[models.embedding] changed: restart the runtime for that' });
    expect(r.models).toContainEqual({ model: 'config', restarted: false, note: 'changed, read only at start (restart the runtime for them): models.operational.ctx_size, runtime.request_timeout' });
    expect(d.service.config.runtime.request_timeout).toBe('10s'); // not applied
    writeFileSync(file, 'models = [');
    const e = await failure(unary(g, 'Reload', {}));
    expect(e?.code).toBe(Code.INVALID_ARGUMENT);
    expect(e?.details).toMatch(/^reload: .*config\.toml: .*; nothing changed$/);
  });

  it('Reload without a config file is FAILED_PRECONDITION', async () => {
    const other = await startDaemon(RuntimeConfigSchema.parse({ ...raw, models: { model_dir: dir, operational: { name: 'op.gguf', ctx_size: 256 } } }), { log: () => {}, service: { launcher: new FakeLauncher() } });
    const c = connect(`127.0.0.1:${other.listening.tcpPort}`);
    try {
      const e = await failure(unary(c, 'Reload', {}));
      expect(e?.code).toBe(Code.FAILED_PRECONDITION);
      expect(e?.details).toBe('this runtime was not started from a config file: nothing to reload');
    } finally {
      c.close();
      await other.stop();
    }
  });
});
