/**
 * `aios runtime serve|pull|status|load|unload|infer` and `aios ps`: run aios-runtime, or talk to a
 * running one over gRPC (src/runtime/client.ts, loaded only when a verb needs it).
 */
import type { Command } from 'commander';
import type { HealthStatus, ModelStatus, RuntimeClient } from '../runtime/client.js';
import { UserError } from '../util/errors.js';
import { formatSize } from '../util/size.js';
import { out } from './common.js';

type ClientApi = typeof import('../runtime/client.js');

/** Connects to aios-runtime at `address`, runs fn with the client (and the client API), and always closes the connection. */
export async function withRuntimeClient<T>(address: string, fn: (c: RuntimeClient, api: ClientApi) => Promise<T>): Promise<T> {
  const api = await import('../runtime/client.js');
  const c = api.connect(address);
  try {
    return await fn(c, api);
  } finally {
    c.close();
  }
}

const until = (t: number, now = Date.now()): string => {
  if (!t) return '-';
  const s = Math.max(0, Math.round((t - now) / 1000));
  return s < 120 ? `in ${s} s` : `in ${Math.round(s / 60)} min`;
};

/** The table `aios ps` prints (exported for tests). */
export function psTable(models: ModelStatus[], health: Pick<HealthStatus, 'memory_budget_bytes' | 'memory_used_bytes' | 'queued'>, now = Date.now()): string {
  const rows = [['NAME', 'STATE', 'ESTIMATE', 'ACTUAL', 'RSS', 'ERROR', 'SLOTS', 'QUEUE', 'IDLE UNTIL']];
  for (const m of models) {
    const q = Object.entries(m.queued_by_priority ?? {})
      .filter(([, n]) => n > 0)
      .map(([p, n]) => `${p}:${n}`)
      .join(' ');
    rows.push([
      m.name,
      m.state,
      formatSize(Number(m.estimate_bytes)),
      m.actual_bytes ? formatSize(Number(m.actual_bytes)) : '-',
      m.memory_bytes ? formatSize(Number(m.memory_bytes)) : '-',
      m.actual_bytes ? `${m.estimate_error_pct >= 0 ? '+' : ''}${m.estimate_error_pct.toFixed(1)} %` : '-',
      `${m.inflight}/${m.parallel}`,
      q || '0',
      m.pinned ? 'pinned' : until(Number(m.idle_until_unix_ms), now),
    ]);
  }
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const lines = rows.map((r) => r.map((c, i) => c.padEnd(w[i]!)).join('  ').trimEnd());
  const budget = Number(health.memory_budget_bytes);
  lines.push('', `memory: ${formatSize(Number(health.memory_used_bytes))} of ${budget ? formatSize(budget) : 'unlimited'} budget; ${health.queued} request(s) waiting`);
  return lines.join('\n');
}

function bar(bytes: number, total: number): string {
  const f = total ? Math.min(1, bytes / total) : 0;
  const n = 30;
  return `[${'#'.repeat(Math.round(f * n)).padEnd(n, '.')}] ${(f * 100).toFixed(0).padStart(3)} % ${formatSize(bytes)}${total ? ` / ${formatSize(total)}` : ''}`;
}

const addressOption = (c: Command) => c.option('-a, --address <addr>', 'runtime address: host:port or unix:/path', 'unix:/run/aios/runtime.sock');

export function registerRuntime(p: Command): void {
  const rt = p.command('runtime').description('aios-runtime: the model service (also runs outside the image)');
  rt.command('serve')
    .description('run aios-runtime with a config.toml until SIGTERM (gRPC on a unix socket and loopback TCP)')
    .requiredOption('-c, --config <file>', 'runtime config (/etc/aios/config.toml in the image)')
    .option('--listen <host:port>', 'TCP address (overrides runtime.listen; "" for none)')
    .option('--socket <path>', 'unix socket (overrides runtime.socket; "" for none)')
    .option('--http <host:port>', 'OpenAI-compatible HTTP API and /metrics (overrides runtime.http_listen; "" for none)')
    .action(async (o: { config: string; listen?: string; socket?: string; http?: string }) => {
      const { serveConfigFile } = await import('../runtime/entry.js');
      process.exitCode = await serveConfigFile(o.config, { listen: o.listen, socket: o.socket, http: o.http }).catch((e: Error) => {
        throw new UserError(e.message, 1);
      });
    });

  addressOption(p.command('ps').description('models loaded in a running aios-runtime: memory (estimate, actual), slots, priority queues, idle-until').option('--json', 'print JSON')).action(async (o: { address: string; json?: boolean }) => {
    await withRuntimeClient(o.address, async (c, { unary }) => {
      const [h, l] = await Promise.all([unary(c, 'HealthCheck', {}, 5000), unary(c, 'ListModels', {}, 5000)]);
      if (o.json) return void out(JSON.stringify({ memory: { budgetBytes: h.memory_budget_bytes, usedBytes: h.memory_used_bytes }, queued: h.queued, models: l.models }, null, 2));
      out(psTable(l.models, h));
    }).catch((e: Error) => {
      throw new UserError(`cannot reach aios-runtime at ${o.address}: ${e.message}`, 1);
    });
  });

  addressOption(rt.command('pull').description("install a catalog model into a running aios-runtime's model dir (resumable, sha256-checked), with a progress bar").argument('<model>', 'catalog id')).action(async (model: string, o: { address: string }) => {
    const tty = process.stderr.isTTY;
    let lastPct = -1;
    await withRuntimeClient(o.address, async (c, { pullModel }) => {
      const r = await pullModel(c, model, (pr) => {
        if (pr.done) return;
        if (tty) process.stderr.write(`\r${model} ${bar(Number(pr.bytes), Number(pr.total))}`);
        else {
          const pct = pr.total ? Math.floor((Number(pr.bytes) / Number(pr.total)) * 10) * 10 : 0;
          if (pct !== lastPct) process.stderr.write(`${model} ${bar(Number(pr.bytes), Number(pr.total))}\n`);
          lastPct = pct;
        }
      });
      if (tty) process.stderr.write(`\r${model} ${bar(Number(r.bytes), Number(r.total))}\n`);
      out(`${model}: ${r.path} (${formatSize(Number(r.bytes))})`);
    }).catch((e: Error) => {
      if (tty) process.stderr.write('\n');
      throw new UserError(`pull ${model}: ${e.message}`, 1);
    });
  });

  addressOption(rt.command('status').description('health and loaded models of a running aios-runtime').option('--json', 'print JSON')).action(async (o: { address: string; json?: boolean }) => {
    await withRuntimeClient(o.address, async (c, { unary }) => {
      const [h, l] = await Promise.all([unary(c, 'HealthCheck', {}, 5000), unary(c, 'ListModels', {}, 5000)]);
      if (o.json) return void out(JSON.stringify({ health: h, models: l.models }, null, 2));
      out(`${h.status} (${h.models_ready} model(s) ready, up ${Math.round(Number(h.uptime_ms) / 1000)} s)`);
      for (const m of l.models) out(`  ${String(m.name).padEnd(24)} ${String(m.level || '-').padEnd(12)} ${String(m.state).padEnd(10)} pid ${m.pid} port ${m.port} ${formatSize(Number(m.memory_bytes))} restarts ${m.restarts}${m.error ? ` error: ${m.error}` : ''}`);
    }).catch((e: Error) => {
      throw new UserError(`cannot reach aios-runtime at ${o.address}: ${e.message}`, 1);
    });
  });
  for (const verb of ['load', 'unload'] as const) {
    addressOption(rt.command(verb).description(`${verb} a model in a running aios-runtime`).argument('<name>', 'model name (a configured layer\'s model, or a new name with --path)').option('--path <file>', 'GGUF file inside the model dir (load only)')).action(
      async (name: string, o: { address: string; path?: string }) => {
        await withRuntimeClient(o.address, async (c, { unary }) => {
          if (verb === 'load') {
            const r = await unary(c, 'LoadModel', { model_name: name, model_path: o.path ?? '' }, 180_000);
            out(`${r.name}: ${r.state} (pid ${r.pid}, port ${r.port})`);
          } else out((await unary(c, 'UnloadModel', { model_name: name }, 180_000)).message);
        }).catch((e: Error) => {
          throw new UserError(`${verb} ${name}: ${e.message}`, 1);
        });
      },
    );
  }
  addressOption(
    rt
      .command('infer')
      .description('send a prompt and stream the answer to the terminal')
      .argument('<prompt>')
      .option('-m, --model <name>', 'model name, or "auto"', '')
      .option('-l, --level <level>', 'operational | tactical | strategic', '')
      .option('-n, --max-tokens <n>', "most tokens to generate (default: the model layer's max_tokens)", (v) => Number(v))
      .option('-t, --temperature <t>', "sampling temperature (default: the model layer's temperature)", (v) => Number(v))
      .option('--system <text>', 'system prompt', '')
      .option('--grammar <gbnf>', 'GBNF grammar for the answer', ''),
  ).action(async (prompt: string, o: { address: string; model: string; level: string; maxTokens?: number; temperature?: number; system: string; grammar: string }) => {
    // max_tokens / temperature only when given: an absent (0) field means the layer's configured value.
    const req = {
      prompt,
      model: o.model,
      intelligence_level: o.level,
      ...(o.maxTokens !== undefined ? { max_tokens: o.maxTokens } : {}),
      ...(o.temperature !== undefined ? { temperature: o.temperature } : {}),
      system_prompt: o.system,
      grammar: o.grammar,
    };
    await withRuntimeClient(o.address, async (c, { streamInfer }) => {
      const last = await streamInfer(c, req, (t) => process.stdout.write(t));
      process.stdout.write('\n');
      process.stderr.write(`[${last.model_used}, ${last.tokens_used} tokens]\n`);
    }).catch((e: Error) => {
      throw new UserError(`infer: ${e.message}`, 1);
    });
  });
}
