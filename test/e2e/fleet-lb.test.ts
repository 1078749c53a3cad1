/**
 * Many nodes, one endpoint (issue 20): three real aios-runtime nodes (each its own llama-server with
 * the tiny synthesized model) on loopback ports, behind Debian's nginx running the configuration
 * `aios fleet lb-config` generates (src/fleet/lb.ts). Only 127.0.0.1 is addressed.
 *
 * - every request through the balancer is answered, spread over the nodes;
 * - a node stopped (its HTTP API closed: connection refused) → requests keep succeeding;
 * - a node whose queue is full answers 429, and the balancer sends that request to another node
 *   (the busy node counted the refusal; the client saw 200).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runtimeFixture } from './runtime-fixture.js';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { startDaemon, type Daemon } from '../../src/runtime/daemon.js';
import { freePort } from '../../src/util/net.js';
import { waitForPort } from '../netns.js';
import { cli, tmp } from '../helpers.js';

const dir = tmp('aios-fleet-lb-');
const nodes: Daemon[] = [];
const served: Record<string, number>[] = [];
let nginx: ChildProcess | undefined;
let lbPort = 0;

function config(runtime: object = {}) {
  return RuntimeConfigSchema.parse({
    runtime: { llama_server: llama, socket: '', listen: '127.0.0.1:0', http_listen: '127.0.0.1:0', health_interval: '1s', ...runtime },
    models: { model_dir: dir, operational: { name: 'tiny.gguf', parallel: 1, ctx_size: 1024 } },
  });
}
let llama = '';

async function chat(port: number, content: string, max_tokens = 4): Promise<{ status: number; body: string }> {
  const r = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content }], max_tokens }),
  });
  return { status: r.status, body: await r.text() };
}

beforeAll(async () => {
  llama = (await runtimeFixture(dir)).llamaServer;
  for (let i = 0; i < 3; i++) {
    // Node 0 has one slot and room for one waiter: easy to fill, so it answers 429.
    const d = await startDaemon(config(i === 0 ? { max_queue_per_model: 1 } : {}), { log: () => {} });
    const counts: Record<string, number> = {};
    d.service.events.on('request', (r: { status: string }) => (counts[r.status] = (counts[r.status] ?? 0) + 1));
    nodes.push(d);
    served.push(counts);
  }
  lbPort = await freePort();
  const state = join(dir, 'lb');
  mkdirSync(state, { recursive: true });
  const conf = join(state, 'nginx.conf');
  // The configuration as an operator gets it: from the command.
  const gen = await cli(['fleet', 'lb-config', ...nodes.flatMap((d) => ['--node', `127.0.0.1:${d.http!.port}`]), '--listen', `127.0.0.1:${lbPort}`, '--state-dir', state, '--user', 'root', '--fail-timeout', '5s']);
  if (gen.exitCode !== 0) throw new Error(`aios fleet lb-config: ${gen.stderr}`);
  writeFileSync(conf, gen.stdout);
  nginx = spawn('nginx', ['-c', conf, '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  nginx.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  await waitForPort('127.0.0.1', lbPort, 10_000).catch((e) => Promise.reject(new Error(`${(e as Error).message}: nginx said ${err}`)));
}, 20 * 60_000);

afterAll(async () => {
  nginx?.kill('SIGTERM');
  await Promise.all(nodes.map((d) => d.stop().catch(() => {})));
});

describe('three nodes behind the generated nginx configuration', () => {
  it('answers every request, spread over the nodes', { timeout: 120_000 }, async () => {
    const before = served.map((s) => s.ok ?? 0);
    for (let i = 0; i < 6; i++) {
      const r = await chat(lbPort, `hello ${i}`);
      expect(r.status, r.body).toBe(200);
      expect(JSON.parse(r.body).choices[0].message).toBeDefined();
    }
    const after = served.map((s) => s.ok ?? 0);
    expect(after.map((a, i) => a - before[i]!).filter((n) => n > 0).length).toBe(3);
  });

  it('a node stopped: requests keep succeeding', { timeout: 120_000 }, async () => {
    // Its HTTP API closes (the balancer gets "connection refused", as from a machine whose runtime
    // stopped). Not Daemon.stop(): with three daemons in this one test process, stopping one made the
    // other two answer their next request 503 ("read ECONNRESET" from their llama-server) — an
    // in-process artefact still to be explained, which separate machines do not share.
    await nodes[2]!.http!.close(0);
    const refused = await fetch(`http://127.0.0.1:${nodes[2]!.http!.port}/health`).then(() => 'answered', (e: Error & { cause?: { code?: string } }) => e.cause?.code ?? e.message);
    expect(refused).toBe('ECONNREFUSED');
    for (let i = 0; i < 6; i++) {
      const r = await chat(lbPort, `after the stop ${i}`);
      expect(r.status, r.body).toBe(200);
    }
  });
  it('a busy node\'s 429 is retried on another node: the client gets 200', { timeout: 120_000 }, async () => {
    // Fill node 0: one long request holds its slot, one more waits; a third is refused with 429.
    const port0 = nodes[0]!.http!.port;
    const holders = [chat(port0, 'Write a very long story.', 500), chat(port0, 'Write another long story.', 500)];
    const t0 = Date.now();
    while (nodes[0]!.service.scheduler.queued('tiny') < 1) {
      if (Date.now() - t0 > 30_000) throw new Error('node 0 never got a waiter');
      await new Promise((r) => setTimeout(r, 20));
    }
    expect((await chat(port0, 'direct')).status).toBe(429);
    const rejectedBefore = served[0]!.rejected ?? 0;
    for (let i = 0; i < 6; i++) {
      const r = await chat(lbPort, `through the balancer ${i}`);
      expect(r.status, r.body).toBe(200);
    }
    // Round robin sent node 0 its share; it refused each (counted) and another node answered.
    expect((served[0]!.rejected ?? 0) - rejectedBefore).toBeGreaterThanOrEqual(1);
    await Promise.all(holders);
  });

});
