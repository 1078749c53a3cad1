import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { Command } from 'commander';
import { program } from '../../src/cli/index.js';
import { REPO, cli } from '../helpers.js';

/** Runs the compiled CLI with its stdout closed before it writes anything, as `aios … | head -c 5` does once head has read enough. */
function withClosedStdout(args: string[]): Promise<{ code: number | null; signal: string | null; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn('node', [join(REPO, 'bin/aios.js'), ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    c.stdout.destroy();
    let stderr = '';
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('close', (code, signal) => resolve({ code, signal, stderr }));
  });
}

const paths = (c: Command, prefix = ''): string[] =>
  c.commands.flatMap((s) => {
    const name = `${prefix}${s.name()}`;
    return [name, ...paths(s, `${name} `)];
  });

describe('the CLI', () => {
  it('has every command, and each renders its help', () => {
    const p = program();
    expect(paths(p).filter((n) => n !== 'bench' && !n.startsWith('bench '))).toEqual([
      'summary',
      'recipes',
      'build',
      'build image',
      'build iso',
      'build llama',
      'build kernel',
      'models',
      'models list',
      'models pull',
      'models verify',
      'models rm',
      'models inspect',
      'models synth',
      'models synth-lora',
      'kernel',
      'kernel check',
      'kernel fetch-debian',
      'runtime',
      'runtime serve',
      'runtime pull',
      'runtime status',
      'runtime load',
      'runtime unload',
      'runtime pin',
      'runtime unpin',
      'runtime infer',
      'runtime reload',
      'runtime keys',
      'runtime keys create',
      'runtime keys list',
      'runtime keys revoke',
      'runtime spend',
      'runtime sessions',
      'runtime sessions ls',
      'runtime sessions rm',
      'ps',
      'top',
      'qemu-test',
      'qemu',
      'flash',
      'doctor',
      'fleet',
      'fleet lb-config',
      'fleet firewall',
      'docs',
      'docs recipe',
    ]);
    const walk = (c: Command): void => {
      expect(c.helpInformation()).toContain('Usage: aios');
      c.commands.forEach(walk);
    };
    walk(p);
  });

  it('ends quietly with exit 0 when stdout is closed early (EPIPE)', async () => {
    // `docs recipe` prints ~9 KB in one write; `recipes` prints line by line.
    for (const args of [['docs', 'recipe'], ['recipes']]) {
      const r = await withClosedStdout(args);
      expect(r.stderr, args.join(' ')).toBe('');
      expect(r).toMatchObject({ code: 0, signal: null });
    }
  });
});

describe('aios runtime infer against a stand-in server', () => {
  const received: Record<string, unknown>[] = [];
  let server: grpc.Server;
  let address = '';

  beforeAll(async () => {
    // defaults: false, so a field the CLI did not send arrives as undefined.
    const def = protoLoader.loadSync('runtime.proto', { includeDirs: [join(REPO, 'proto')], keepCase: true, defaults: false, oneofs: true });
    const proto = grpc.loadPackageDefinition(def) as unknown as { aios: { runtime: { AIRuntime: { service: grpc.ServiceDefinition } } } };
    server = new grpc.Server();
    server.addService(proto.aios.runtime.AIRuntime.service, {
      StreamInfer: (call: grpc.ServerWritableStream<Record<string, unknown>, unknown>) => {
        received.push(call.request);
        const pieces = call.request.prompt === 'long' ? 2000 : 2;
        let i = 0;
        const next = () => {
          while (i < pieces && !call.cancelled) {
            if (!call.write({ text: `piece ${i++} ` })) return void call.once('drain', next);
          }
          if (call.cancelled) return;
          call.write({ text: '', done: true, model_used: 'stand-in', tokens_used: pieces });
          call.end();
        };
        next();
      },
    });
    const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
    address = `127.0.0.1:${port}`;
  });
  afterAll(() => server?.forceShutdown());

  it("leaves max_tokens and temperature to the model layer unless given", async () => {
    const plain = await cli(['runtime', 'infer', 'hi', '-a', address]);
    expect(plain.exitCode, plain.stderr).toBe(0);
    expect(plain.stdout).toBe('piece 0 piece 1 ');
    expect(plain.stderr).toContain('[stand-in, 2 tokens]');
    expect(received.at(-1)).toMatchObject({ prompt: 'hi' });
    expect(received.at(-1)!.max_tokens).toBeUndefined();
    expect(received.at(-1)!.temperature).toBeUndefined();

    const given = await cli(['runtime', 'infer', 'hi', '-a', address, '-n', '5', '-t', '0.25']);
    expect(given.exitCode, given.stderr).toBe(0);
    expect(received.at(-1)).toMatchObject({ prompt: 'hi', max_tokens: 5, temperature: 0.25 });
  });

  it('ends quietly with exit 0 when the reader of its stream goes away', async () => {
    const r = await withClosedStdout(['runtime', 'infer', 'long', '-a', address]);
    expect(r.stderr).toBe('');
    expect(r).toMatchObject({ code: 0, signal: null });
  });
});
