/**
 * A split model's workers in the model lists (issue 20; docs/fleets.md): ListModels' rpc_workers,
 * /v1/models and `aios ps` show each worker's address, what llama-server reported placing there
 * (its "RPCn[address] … buffer size" lines) and admission's plan. A fake llama-server and fake
 * workers (the memory they report): test/e2e/fleet-rpc.test.ts checks the figures against real
 * workers.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { FakeLauncher } from '../fake-child.js';
import { writeTestGguf } from '../gguf-writer.js';
import { tmp } from '../helpers.js';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { startDaemon, type Daemon } from '../../src/runtime/daemon.js';
import { connect, type RuntimeClient } from '../../src/runtime/client.js';
import { RpcWorkers } from '../../src/runtime/rpc.js';
import { bytesByWorker } from '../../src/runtime/supervisor.js';
import { psTable } from '../../src/cli/runtime.js';
import type { LaunchProfile, ProcessHandle } from '../../src/runtime/child.js';
import type { ModelStatus__Output as ModelStatus } from '../../src/runtime/generated/aios/runtime/ModelStatus.js';

const MiB = 1024 * 1024;
const W1 = '10.0.0.2:50052';
const W2 = '10.0.0.3:50052';
const dir = tmp('aios-fleet-shares-');
writeTestGguf(join(dir, 'op.gguf'));
copyFileSync(join(dir, 'op.gguf'), join(dir, 'big.gguf'));

/** A fake llama-server that reports, for a split model, buffers on its RPC devices as the real one logs them. */
class SplitLauncher extends FakeLauncher {
  override async start(profile: LaunchProfile): Promise<{ port: number; proc: ProcessHandle }> {
    const r = await super.start(profile);
    if (profile.rpc?.length) {
      Object.assign(r.proc.buffers.byName, {
        [`RPC0[${W1}] model`]: 30 * MiB,
        [`RPC0[${W1}] KV`]: 2 * MiB,
        [`RPC1[${W2}] model`]: 20 * MiB,
        [`RPC1[${W2}] compute`]: 1 * MiB,
        'CPU_Mapped model': 5 * MiB,
      });
    }
    return r;
  }
}

function call<T>(c: RuntimeClient, method: string, req: object): Promise<T> {
  return new Promise((resolve, reject) => (c[method] as (r: object, cb: (e: grpc.ServiceError | null, r: T) => void) => void).call(c, req, (e, r) => (e ? reject(e) : resolve(r))));
}

describe('a split model\'s workers in ListModels, /v1/models and aios ps', () => {
  let d: Daemon;
  let c: RuntimeClient;
  beforeAll(async () => {
    const config = RuntimeConfigSchema.parse({
      runtime: { llama_server: '/nonexistent', socket: '', listen: '127.0.0.1:0', http_listen: '127.0.0.1:0', health_interval: '1s', rpc_workers: [{ address: W1, memory: '500M' }, { address: W2 }] },
      models: { model_dir: dir, operational: { name: 'op.gguf', ctx_size: 256 }, tactical: { name: 'big.gguf', ctx_size: 256, rpc: true } },
    });
    // The workers' answers to the memory question: 3000 and 1000 MiB free, so llama.cpp puts three quarters on the first.
    const rpc = new RpcWorkers({
      llamaServer: '/nonexistent',
      workers: [{ address: W1, capBytes: 500 * MiB }, { address: W2, capBytes: 0 }],
      probe: async () => undefined,
      query: async (_b, addrs) => addrs.map((a, i) => ({ device: `RPC${i}`, address: a, description: a, totalBytes: 4000 * MiB, freeBytes: (a === W1 ? 3000 : 1000) * MiB })),
      closed: () => [],
    });
    d = await startDaemon(config, { log: () => {}, service: { launcher: new SplitLauncher(), supervisor: { rpc, child: { backoffMs: () => 1, pollMs: 5 } } } });
    c = connect(`127.0.0.1:${d.listening.tcpPort}`);
    await call(c, 'Infer', { prompt: 'hi', max_tokens: 2, model: 'big' });
  });
  afterAll(async () => {
    c?.close();
    await d?.stop();
  });

  it('ListModels: each worker\'s address, the bytes placed there, the planned share and the room', async () => {
    const r = await call<{ models: ModelStatus[] }>(c, 'ListModels', {});
    const big = r.models.find((m) => m.name === 'big')!;
    expect(big.rpc_workers.map((w) => [w.address, Number(w.bytes)])).toEqual([
      [W1, 32 * MiB],
      [W2, 21 * MiB],
    ]);
    const [a, b] = big.rpc_workers;
    // Planned by the reported free memory: 3:1.
    expect(Number(a!.planned_bytes)).toBeGreaterThan(0);
    expect(Number(a!.planned_bytes) / Number(b!.planned_bytes)).toBeCloseTo(3, 1);
    expect(Number(a!.available_bytes)).toBe(500 * MiB); // capped by memory = "500M"
    expect(Number(a!.free_bytes)).toBe(3000 * MiB);
    expect(Number(b!.available_bytes)).toBe(1000 * MiB);
    // A model on the head alone has none.
    expect(r.models.find((m) => m.name === 'op')!.rpc_workers).toEqual([]);
  });

  it('/v1/models lists them for the split model only', async () => {
    const j = (await (await fetch(`http://127.0.0.1:${d.http!.port}/v1/models`)).json()) as { data: { id: string; rpc_workers?: { address: string; bytes: number }[] }[] };
    expect(j.data.find((m) => m.id === 'big')!.rpc_workers!.map((w) => [w.address, w.bytes])).toEqual([
      [W1, 32 * MiB],
      [W2, 21 * MiB],
    ]);
    expect(j.data.find((m) => m.id === 'op')!.rpc_workers).toBeUndefined();
  });

  it('aios ps prints a row per worker of each split model', async () => {
    const r = await call<{ models: ModelStatus[] }>(c, 'ListModels', {});
    const t = psTable(r.models, { memory_budget_bytes: 0, memory_used_bytes: 0, queued: 0 });
    const lines = t.split('\n');
    const head = lines.findIndex((l) => l.startsWith('SPLIT MODEL'));
    expect(lines[head]).toMatch(/^SPLIT MODEL\s+RPC WORKER\s+PLACED\s+PLANNED\s+AVAILABLE\s+REPORTED FREE$/);
    expect(lines[head + 1]).toMatch(new RegExp(`^big\\s+${W1.replace(/\./g, '\\.')}\\s+32(\\.0)? MiB\\s+\\S+ \\S+\\s+500(\\.0)? MiB\\s+2\\.9 GiB$`));
    expect(lines[head + 2]).toMatch(new RegExp(`^big\\s+${W2.replace(/\./g, '\\.')}\\s+21(\\.0)? MiB`));
    // No such section without a split model.
    expect(psTable(r.models.filter((m) => m.name === 'op'), { memory_budget_bytes: 0, memory_used_bytes: 0, queued: 0 })).not.toContain('SPLIT MODEL');
  });
});

describe('bytesByWorker', () => {
  it('sums llama-server\'s buffers per RPC worker address, and nothing else', () => {
    expect([...bytesByWorker({ 'RPC0[10.0.0.2:50052] model': 3, 'RPC0[10.0.0.2:50052] KV': 1, 'RPC1[[fd00::2]:50052] model': 5, 'CPU_Mapped model': 7, 'CUDA0 compute': 9 })]).toEqual([
      ['10.0.0.2:50052', 4],
      ['[fd00::2]:50052', 5],
    ]);
  });
});
