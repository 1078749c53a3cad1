/**
 * `aios runtime serve|pull|status|load|unload|pin|unpin|infer|keys` and `aios ps`: run aios-runtime, or talk to
 * a running one over gRPC (src/runtime/client.ts, loaded only when a verb needs it): the unix socket,
 * or TCP with mutual TLS from `--tls-dir` / AIOS_TLS_DIR (out/<name>.pki/ of the image's build).
 */
import { Option, type Command } from 'commander';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { ApiKey, ConnectOptions, HealthStatus, ModelStatus, RuntimeClient, SessionList, SpendReport } from '../runtime/client.js';
import { UserError } from '../util/errors.js';
import { formatSize, parseSize, SIZE_RE } from '../util/size.js';
import { out } from './common.js';

type ClientApi = typeof import('../runtime/client.js');

/**
 * Connects to aios-runtime at `address` (with mutual TLS when `tls.tlsDir` is given and the address is
 * TCP), runs fn with the client (and the client API), and always closes the connection. Errors are
 * explained (a refused certificate says so, not grpc-js's connection details).
 */
export async function withRuntimeClient<T>(address: string, fn: (c: RuntimeClient, api: ClientApi) => Promise<T>, tls: ConnectOptions = {}): Promise<T> {
  const api = await import('../runtime/client.js');
  const c = api.connectRuntime(address, tls);
  try {
    return await fn(c, api);
  } catch (e) {
    throw new Error(api.explainError(e, address, tls));
  } finally {
    c.close();
  }
}

/** The connection options every verb takes. */
interface Conn {
  address: string;
  tlsDir?: string;
  tlsServerName?: string;
}
/**
 * The TLS options of a verb: --tls-dir / AIOS_TLS_DIR; for an address beyond loopback without either,
 * the one pki dir a build left in ./out (out/<name>.pki), if there is exactly one.
 */
export function tlsOf(o: Conn, outDir = 'out'): ConnectOptions {
  const serverName = o.tlsServerName || undefined;
  if (o.tlsDir) return { tlsDir: o.tlsDir, serverName };
  // (the same loopback rule as runtime/config.ts's isLoopbackHost, without loading the config schema)
  if (o.address.startsWith('unix:') || /^(localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\]|::1)(:\d+)?$/i.test(o.address)) return { serverName };
  const found = existsSync(outDir) ? readdirSync(outDir).filter((d) => d.endsWith('.pki') && existsSync(join(outDir, d, 'client.crt'))) : [];
  if (found.length !== 1) return { serverName };
  const tlsDir = join(outDir, found[0]!);
  process.stderr.write(`aios: using the TLS dir ${tlsDir} (--tls-dir to choose another)\n`);
  return { tlsDir, serverName };
}

const until = (t: number, now = Date.now()): string => {
  if (!t) return '-';
  const s = Math.max(0, Math.round((t - now) / 1000));
  return s < 120 ? `in ${s} s` : `in ${Math.round(s / 60)} min`;
};

/** The table `aios ps` prints (exported for tests). */
export function psTable(models: ModelStatus[], health: Pick<HealthStatus, 'memory_budget_bytes' | 'memory_used_bytes' | 'queued'>, now = Date.now()): string {
  // Models in cgroups of their own (model sandbox): memory.current, memory.peak, memory.max and OOM kills too.
  const cg = models.some((m) => Number(m.memory_limit_bytes) > 0 || Number(m.cgroup_memory_bytes) > 0);
  // LoRA adapters (one not loaded marked "!": refused, the reason below, or added after the model started)
  // and saved sessions (count, KV bytes), where any model has some.
  const lora = models.some((m) => m.adapters?.length || m.sessions);
  // Models offloaded to a GPU (docs/gpu.md): their GPU memory, estimated and as llama-server reported it.
  const gpu = models.some((m) => Number(m.vram_estimate_bytes) > 0 || Number(m.vram_bytes) > 0);
  const rows = [['NAME', 'STATE', 'ESTIMATE', 'ACTUAL', 'RSS', 'ERROR', 'SLOTS', 'QUEUE', 'IDLE UNTIL', ...(gpu ? ['VRAM EST', 'VRAM'] : []), ...(cg ? ['CGROUP', 'PEAK', 'LIMIT', 'OOM'] : []), ...(lora ? ['ADAPTERS', 'SESSIONS'] : [])]];
  const problems: string[] = [];
  for (const m of models) {
    if (m.error) problems.push(`${m.name}: ${m.error}`);
    for (const a of m.adapters ?? []) if (a.refused) problems.push(`${m.name}: adapter ${a.name} refused: ${a.refused}`);
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
      ...(gpu ? [Number(m.vram_estimate_bytes) ? formatSize(Number(m.vram_estimate_bytes)) : '-', Number(m.vram_bytes) ? formatSize(Number(m.vram_bytes)) : '-'] : []),
      ...(cg
        ? [
            Number(m.cgroup_memory_bytes) ? formatSize(Number(m.cgroup_memory_bytes)) : '-',
            Number(m.cgroup_peak_bytes) ? formatSize(Number(m.cgroup_peak_bytes)) : '-',
            Number(m.memory_limit_bytes) ? formatSize(Number(m.memory_limit_bytes)) : '-',
            String(m.oom_kills ?? 0),
          ]
        : []),
      ...(lora
        ? [
            (m.adapters ?? []).map((a) => `${a.name}${a.loaded ? '' : '!'}`).join(',') || '-',
            m.sessions ? `${m.sessions} (${formatSize(Number(m.session_bytes))})` : '-',
          ]
        : []),
    ]);
  }
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const lines = rows.map((r) => r.map((c, i) => c.padEnd(w[i]!)).join('  ').trimEnd());
  // Models split across RPC workers (docs/fleets.md): what each worker holds, as llama-server reported
  // placing it, beside admission's plan and the room there.
  const split = models.filter((m) => m.rpc_workers?.length);
  if (split.length) {
    const r = [['SPLIT MODEL', 'RPC WORKER', 'PLACED', 'PLANNED', 'AVAILABLE', 'REPORTED FREE']];
    for (const m of split) {
      for (const x of m.rpc_workers) {
        const size = (b: number | string) => (Number(b) ? formatSize(Number(b)) : '-');
        r.push([m.name, x.address, size(x.bytes), size(x.planned_bytes), size(x.available_bytes), size(x.free_bytes)]);
      }
    }
    const sw = r[0]!.map((_, i) => Math.max(...r.map((x) => x[i]!.length)));
    lines.push('', ...r.map((x) => x.map((c, i) => c.padEnd(sw[i]!)).join('  ').trimEnd()));
  }
  const budget = Number(health.memory_budget_bytes);
  if (problems.length) lines.push('', ...problems);
  lines.push('', `memory: ${formatSize(Number(health.memory_used_bytes))} of ${budget ? formatSize(budget) : 'unlimited'} budget; ${health.queued} request(s) waiting`);
  return lines.join('\n');
}

function bar(bytes: number, total: number): string {
  const f = total ? Math.min(1, bytes / total) : 0;
  const n = 30;
  return `[${'#'.repeat(Math.round(f * n)).padEnd(n, '.')}] ${(f * 100).toFixed(0).padStart(3)} % ${formatSize(bytes)}${total ? ` / ${formatSize(total)}` : ''}`;
}

/** -a, --tls-dir (AIOS_TLS_DIR), --tls-server-name: where the runtime is and how to authenticate. */
const addressOption = (c: Command) =>
  c
    .option('-a, --address <addr>', 'runtime address: host:port or unix:/path', 'unix:/run/aios/runtime.sock')
    .addOption(new Option('--tls-dir <dir>', 'mutual TLS for a host:port address: a dir with ca.crt, client.crt, client.key (aios build writes out/<name>.pki/)').env('AIOS_TLS_DIR'))
    .option('--tls-server-name <name>', "the name the runtime's certificate carries, when --address is not one of them (e.g. an IP not in its SANs)");

/** The table `aios runtime keys list` prints (exported for tests). */
export function keysTable(keys: ApiKey[]): string {
  const rows = [['ID', 'SCOPE', 'SOURCE', 'CREATED', 'REVOKED', 'NAME'], ...keys.map((k) => [k.id, k.scope, k.source, k.created, k.revoked || '-', k.name || '-'])];
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(w[i]!)).join('  ').trimEnd()).join('\n');
}

/** `aios ps`: the strategic layer's providers, with this month's spend against each budget (never a key). */
export function providersTable(r: SpendReport): string {
  const rows = [['PROVIDER', 'MODEL', 'SPENT/BUDGET', 'REQUESTS', 'STATE']];
  for (const p of r.providers) rows.push([`${p.name} (${p.provider}${p.fallback_only ? ', fallback' : ''})`, p.model, `$${p.spent_usd.toFixed(2)}/$${p.budget_usd.toFixed(2)}`, String(p.requests), p.unavailable || 'ok']);
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((x) => x[i]!.length)));
  return ['', `strategic layer, ${r.month}:`, ...rows.map((x) => x.map((c, i) => c.padEnd(w[i]!)).join('  ').trimEnd())].join('\n');
}

/** `aios runtime spend`: one line per cloud provider (spend, budget, remaining, requests, tokens). */
export function spendTable(r: SpendReport): string {
  if (!r.providers.length) return `no cloud providers ([api.<name>] tables) on this runtime`;
  const d = (n: number) => `$${n.toFixed(2)}`;
  const rows = [['PROVIDER', 'MODEL', 'SPENT', 'BUDGET', 'REMAINING', 'REQUESTS', 'FAILED', 'IN', 'OUT', 'CACHE R/W', 'REASONING', 'NOTE']];
  for (const p of r.providers) {
    rows.push([
      `${p.name}${p.fallback_only ? ' (fallback)' : ''}`,
      p.model,
      d(p.spent_usd),
      d(p.budget_usd),
      d(p.remaining_usd),
      String(p.requests),
      String(p.failures),
      String(p.input_tokens),
      String(p.output_tokens),
      `${p.cache_read_tokens}/${p.cache_write_tokens}`,
      String(p.reasoning_tokens),
      [p.reserved_usd > 0 ? `${d(p.reserved_usd)} reserved (calls out)` : '', p.unavailable].filter(Boolean).join('; ') || '-',
    ]);
  }
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((x) => x[i]!.length)));
  return [`month ${r.month} (UTC)${r.ledger_dir ? `, ledger ${r.ledger_dir}` : ''}`, ...rows.map((x) => x.map((c, i) => c.padEnd(w[i]!)).join('  ').trimEnd())].join('\n');
}

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

  addressOption(p.command('ps').description('models loaded in a running aios-runtime: memory (estimate, actual), slots, priority queues, idle-until').option('--json', 'print JSON')).action(async (o: Conn & { json?: boolean }) => {
    await withRuntimeClient(o.address, async (c, { unary }) => {
      const [h, l] = await Promise.all([unary(c, 'HealthCheck', {}, 5000), unary(c, 'ListModels', {}, 5000)]);
      // The strategic layer's providers (Spend needs the admin scope: without it, none are shown).
      const spend = await unary(c, 'Spend', {}, 5000).catch(() => undefined);
      if (o.json) return void out(JSON.stringify({ memory: { budgetBytes: h.memory_budget_bytes, usedBytes: h.memory_used_bytes }, queued: h.queued, models: l.models, providers: spend?.providers ?? [] }, null, 2));
      out(psTable(l.models, h));
      if (spend?.providers.length) out(providersTable(spend));
    }, tlsOf(o)).catch((e: Error) => {
      throw new UserError(`cannot reach aios-runtime at ${o.address}: ${e.message}`, 1);
    });
  });

  addressOption(rt.command('pull').description("install a catalog model into a running aios-runtime's model dir (resumable, sha256-checked), with a progress bar").argument('<model>', 'catalog id')).action(async (model: string, o: Conn) => {
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
    }, tlsOf(o)).catch((e: Error) => {
      if (tty) process.stderr.write('\n');
      throw new UserError(`pull ${model}: ${e.message}`, 1);
    });
  });

  addressOption(rt.command('status').description('health and loaded models of a running aios-runtime').option('--json', 'print JSON')).action(async (o: Conn & { json?: boolean }) => {
    await withRuntimeClient(o.address, async (c, { unary }) => {
      const [h, l] = await Promise.all([unary(c, 'HealthCheck', {}, 5000), unary(c, 'ListModels', {}, 5000)]);
      if (o.json) return void out(JSON.stringify({ health: h, models: l.models }, null, 2));
      out(`${h.status} (${h.models_ready} model(s) ready, up ${Math.round(Number(h.uptime_ms) / 1000)} s)`);
      for (const m of l.models) out(`  ${String(m.name).padEnd(24)} ${String(m.level || '-').padEnd(12)} ${String(m.state).padEnd(10)} pid ${m.pid} port ${m.port} ${formatSize(Number(m.memory_bytes))} restarts ${m.restarts}${m.error ? ` error: ${m.error}` : ''}`);
    }, tlsOf(o)).catch((e: Error) => {
      throw new UserError(`cannot reach aios-runtime at ${o.address}: ${e.message}`, 1);
    });
  });
  for (const verb of ['load', 'unload'] as const) {
    const cmd = rt.command(verb).description(`${verb} a model in a running aios-runtime`).argument('<name>', 'model name (a configured layer\'s model, or a new name with --path)').option('--path <file>', 'GGUF file inside the model dir (load only)');
    if (verb === 'load') cmd.option('--memory-max <size>', "memory.max of the model's cgroup (e.g. 512M) instead of its budgeted footprint + runtime.child_memory_margin: past it the kernel kills this model alone");
    addressOption(cmd).action(
      async (name: string, o: Conn & { path?: string; memoryMax?: string }) => {
        if (o.memoryMax !== undefined && !SIZE_RE.test(o.memoryMax)) throw new UserError(`--memory-max: not a size: ${o.memoryMax} (e.g. 512M, 2G)`, 2);
        await withRuntimeClient(o.address, async (c, { unary }) => {
          if (verb === 'load') {
            const r = await unary(c, 'LoadModel', { model_name: name, model_path: o.path ?? '', memory_limit_bytes: o.memoryMax ? parseSize(o.memoryMax) : 0 }, 180_000);
            out(`${r.name}: ${r.state} (pid ${r.pid}, port ${r.port})`);
          } else out((await unary(c, 'UnloadModel', { model_name: name }, 180_000)).message);
        }, tlsOf(o)).catch((e: Error) => {
          throw new UserError(`${verb} ${name}: ${e.message}`, 1);
        });
      },
    );
  }
  for (const verb of ['pin', 'unpin'] as const) {
    addressOption(
      rt
        .command(verb)
        .description(verb === 'pin' ? 'pin a loaded model: never evicted nor unloaded for idleness (until unloaded or the runtime restarts)' : "unpin a model pinned with `aios runtime pin` (the config's pins stay)")
        .argument('<name>', 'model name'),
    ).action(async (name: string, o: Conn) => {
      await withRuntimeClient(o.address, async (c, { unary }) => {
        const r = await unary(c, 'PinModel', { model_name: name, pinned: verb === 'pin' }, 30_000);
        out(`${r.name}: ${r.pinned ? `pinned (by ${r.pinned_by || 'config'})` : 'not pinned'}${r.pinned ? '' : r.idle_until_unix_ms ? `, unloads for idleness ${until(Number(r.idle_until_unix_ms))}` : ''}`);
      }, tlsOf(o)).catch((e: Error) => {
        throw new UserError(`${verb} ${name}: ${e.message}`, 1);
      });
    });
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
      .option('--grammar <gbnf>', 'GBNF grammar for the answer', '')
      .option('--adapter <name[:scale]>', "apply a LoRA adapter configured for the model (repeatable; scale default: the adapter's)", (v: string, acc: string[]) => [...acc, v], [] as string[])
      .option('--task <text>', 'with no --adapter: apply the adapters whose description is most similar to this task ([models.embedding])', '')
      .option('--session <id>', 'a saved session: the runtime keeps the conversation (and its KV state) under this id; send only the new turn', ''),
  ).action(async (prompt: string, o: Conn & { model: string; level: string; maxTokens?: number; temperature?: number; system: string; grammar: string; session: string; adapter: string[]; task: string }) => {
    // max_tokens / temperature only when given: an absent (0) field means the layer's configured value.
    const req = {
      prompt,
      model: o.model,
      intelligence_level: o.level,
      ...(o.maxTokens !== undefined ? { max_tokens: o.maxTokens } : {}),
      ...(o.temperature !== undefined ? { temperature: o.temperature } : {}),
      system_prompt: o.system,
      grammar: o.grammar,
      session_id: o.session,
      adapters: o.adapter.map((a) => {
        const m = /^([^:]+)(?::(-?[\d.]+))?$/.exec(a);
        if (!m) throw new UserError(`--adapter ${a}: expected NAME or NAME:SCALE`, 2);
        return { name: m[1]!, ...(m[2] !== undefined ? { scale: Number(m[2]) } : {}) };
      }),
      task: o.task,
    };
    await withRuntimeClient(o.address, async (c, { streamInfer }) => {
      const last = await streamInfer(c, req, (t) => process.stdout.write(t));
      process.stdout.write('\n');
      const ss = last.session;
      // A session turn: what happened to its saved state (restored and reused, discarded and why…).
      const sess = ss ? `, session ${ss.id}: ${ss.cache}${ss.restored_tokens ? ` (${ss.restored_tokens} tokens restored, ${ss.cached_tokens} reused)` : ''}${ss.saved ? '' : ', state not saved'}` : '';
      process.stderr.write(`[${last.model_used}, ${last.tokens_used} tokens${sess}]\n`);
      if (ss?.note) process.stderr.write(`${ss.note}\n`);
    }, tlsOf(o)).catch((e: Error) => {
      throw new UserError(`infer: ${e.message}`, 1);
    });
  });

  addressOption(
    rt
      .command('reload')
      .description("read the runtime's config file again and apply its adapter lists ([[models.<layer>.adapters]]): a model whose adapter files changed is restarted after its running requests finish (SIGHUP does the same)")
      .option('--json', 'print JSON'),
  ).action(async (o: Conn & { json?: boolean }) => {
    await withRuntimeClient(o.address, async (c, { unary }) => {
      const r = await unary(c, 'Reload', {}, 300_000);
      out(o.json ? JSON.stringify(r, null, 2) : r.models.map((m) => `${m.model}: ${m.restarted ? 'restarted' : 'not restarted'} (${m.note})`).join('\n') || 'no configured models');
    }, tlsOf(o)).catch((e: Error) => {
      throw new UserError(`reload: ${e.message}`, 1);
    });
  });

  const keys = rt.command('keys').description("the HTTP API's keys on a running aios-runtime (admin): create, list, revoke; changes apply at once and survive restarts");
  addressOption(
    keys
      .command('create')
      .description('make a key; it is printed once (stdout), the runtime keeps only its hash')
      .addOption(new Option('--scope <scope>', 'infer: completions and models; admin: everything; metrics: /metrics only').choices(['infer', 'admin', 'metrics']).default('infer'))
      .option('--name <name>', 'a label shown in lists', '')
      .option('--json', 'print {id, scope, name, key} as JSON'),
  ).action(async (o: Conn & { scope: string; name: string; json?: boolean }) => {
    await withRuntimeClient(o.address, async (c, { unary }) => {
      const r = await unary(c, 'CreateKey', { scope: o.scope, name: o.name }, 10_000);
      if (o.json) return void out(JSON.stringify({ id: r.info!.id, scope: r.info!.scope, name: r.info!.name, key: r.key }));
      out(r.key);
      process.stderr.write(`key ${r.info!.id} (scope ${r.info!.scope}${r.info!.name ? `, name ${r.info!.name}` : ''}): shown this once; clients send "Authorization: Bearer <key>" (OpenAI SDKs: apiKey)\n`);
    }, tlsOf(o)).catch((e: Error) => {
      throw new UserError(`keys create: ${e.message}`, 1);
    });
  });
  addressOption(keys.command('list').description('the keys the runtime accepts or has revoked (ids, scopes, sources; never the keys)').option('--json', 'print JSON')).action(async (o: Conn & { json?: boolean }) => {
    await withRuntimeClient(o.address, async (c, { unary }) => {
      const r = await unary(c, 'ListKeys', {}, 10_000);
      out(o.json ? JSON.stringify(r.keys, null, 2) : keysTable(r.keys));
    }, tlsOf(o)).catch((e: Error) => {
      throw new UserError(`keys list: ${e.message}`, 1);
    });
  });
  addressOption(
    rt
      .command('spend')
      .description("the strategic layer's cloud spend per provider for a month (from the runtime's crash-safe ledger): spent, budget, remaining, requests, tokens by kind")
      .option('--month <YYYY-MM>', 'a past month (UTC); default this month')
      .option('--json', 'print JSON'),
  ).action(async (o: Conn & { month?: string; json?: boolean }) => {
    if (o.month && !/^\d{4}-(0[1-9]|1[0-2])$/.test(o.month)) throw new UserError(`spend: --month must be YYYY-MM (got "${o.month}")`, 2);
    await withRuntimeClient(o.address, async (c, { unary }) => {
      const r = await unary(c, 'Spend', { month: o.month ?? '' }, 10_000);
      out(o.json ? JSON.stringify(r, null, 2) : spendTable(r));
    }, tlsOf(o)).catch((e: Error) => {
      throw new UserError(`spend: ${e.message}`, 1);
    });
  });
  addressOption(keys.command('revoke').description('revoke a key by its id (a build-time key too); refused from the next request on').argument('<id>', 'the key id (aios runtime keys list)')).action(async (id: string, o: Conn) => {
    await withRuntimeClient(o.address, async (c, { unary }) => out((await unary(c, 'RevokeKey', { id }, 10_000)).message), tlsOf(o)).catch((e: Error) => {
      throw new UserError(`keys revoke ${id}: ${e.message}`, 1);
    });
  });

  const sessions = rt.command('sessions').description('saved sessions on a running aios-runtime: conversations kept by id with their KV state (admin)');
  const sessionsLs = (o: Conn & { json?: boolean }) =>
    withRuntimeClient(o.address, async (c, { unary }) => {
      const r = await unary(c, 'ListSessions', {}, 10_000);
      out(o.json ? JSON.stringify(r, null, 2) : sessionsTable(r));
    }, tlsOf(o)).catch((e: Error) => {
      throw new UserError(`sessions ls: ${e.message}`, 1);
    });
  addressOption(sessions.command('ls', { isDefault: true }).description('the saved sessions, most recent first: model, turns, saved state size, last cache outcome').option('--json', 'print JSON')).action(sessionsLs);
  addressOption(sessions.command('rm').description('delete saved sessions (conversation and state)').argument('<id...>', 'session ids').option('--json', 'print JSON')).action(async (ids: string[], o: Conn & { json?: boolean }) => {
    await withRuntimeClient(o.address, async (c, { unary }) => {
      const done: { id: string; ok: boolean; message: string }[] = [];
      for (const id of ids) {
        try {
          done.push({ id, ok: true, message: (await unary(c, 'DeleteSession', { session_id: id }, 10_000)).message });
        } catch (e) {
          done.push({ id, ok: false, message: (e as { details?: string }).details ?? (e as Error).message });
        }
      }
      const failed = done.filter((d) => !d.ok);
      if (o.json) out(JSON.stringify(done, null, 2));
      else if (done.length > failed.length) out(done.filter((d) => d.ok).map((d) => d.message).join('\n'));
      if (failed.length) throw new Error(failed.map((d) => `${d.id}: ${d.message}`).join('; '));
    }, tlsOf(o)).catch((e: Error) => {
      throw new UserError(`sessions rm: ${e.message}`, 1);
    });
  });
}

/** The table `aios runtime sessions ls` prints (exported for tests). */
export function sessionsTable(r: SessionList): string {
  const mib = (b: number) => (b ? `${(b / 1048576).toFixed(1)} MiB` : '-');
  const rows = [['ID', 'MODEL', 'TURNS', 'TOKENS', 'STATE', 'LAST', 'UPDATED'], ...r.sessions.map((x) => [x.id, x.model, String(x.turns), String(x.kv_tokens), mib(Number(x.kv_bytes)), x.last_cache, x.updated])];
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  const lines = rows.map((row) => row.map((c, i) => c.padEnd(w[i]!)).join('  ').trimEnd());
  lines.push(`${r.sessions.length} session(s), ${mib(Number(r.total_bytes))} of ${mib(Number(r.max_bytes))} (runtime.sessions_max_bytes) in ${r.dir}`);
  return lines.join('\n');
}
