/** `aios ps` (loaded models, memory, queues, like `ollama ps`) and `aios runtime pull` (catalog install with a progress bar). */
import type { Command } from 'commander';
import { UserError } from '../util/errors.js';
import { formatSize } from '../util/size.js';

const out = (s: string) => process.stdout.write(`${s}\n`);

interface ModelRow {
  name: string;
  level: string;
  state: string;
  pid: number;
  memory_bytes: number;
  estimate_bytes: number;
  actual_bytes: number;
  estimate_error_pct: number;
  pinned: boolean;
  idle_until_unix_ms: number;
  inflight: number;
  queued: number;
  parallel: number;
  queued_by_priority: Record<string, number>;
}

const until = (t: number, now = Date.now()): string => {
  if (!t) return '-';
  const s = Math.max(0, Math.round((t - now) / 1000));
  return s < 120 ? `in ${s} s` : `in ${Math.round(s / 60)} min`;
};

/** The table `aios ps` prints (exported for tests). */
export function psTable(models: ModelRow[], health: { memory_budget_bytes: number; memory_used_bytes: number; queued: number }, now = Date.now()): string {
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

export function addRuntimeSchedulerCommands(p: Command, rt: Command, addrOpt: (c: Command) => Command): void {
  addrOpt(p.command('ps').description('models loaded in a running aios-runtime: memory (estimate, actual), slots, priority queues, idle-until').option('--json', 'print JSON')).action(async (o: { address: string; json?: boolean }) => {
    const { connect, unary } = await import('../runtime/client.js');
    const c = connect(o.address);
    try {
      const [h, l] = await Promise.all([
        unary<{ memory_budget_bytes: number; memory_used_bytes: number; queued: number }>(c, 'HealthCheck', {}, 5000),
        unary<{ models: ModelRow[] }>(c, 'ListModels', {}, 5000),
      ]);
      if (o.json) return void out(JSON.stringify({ memory: { budgetBytes: h.memory_budget_bytes, usedBytes: h.memory_used_bytes }, queued: h.queued, models: l.models }, null, 2));
      out(psTable(l.models, h));
    } catch (e) {
      throw new UserError(`cannot reach aios-runtime at ${o.address}: ${(e as Error).message}`, 1);
    } finally {
      c.close();
    }
  });

  addrOpt(rt.command('pull').description("install a catalog model into a running aios-runtime's model dir (resumable, sha256-checked), with a progress bar").argument('<model>', 'catalog id')).action(async (model: string, o: { address: string }) => {
    const { connect, pullModel } = await import('../runtime/client.js');
    const c = connect(o.address);
    const tty = process.stderr.isTTY;
    let lastPct = -1;
    try {
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
    } catch (e) {
      if (tty) process.stderr.write('\n');
      throw new UserError(`pull ${model}: ${(e as Error).message}`, 1);
    } finally {
      c.close();
    }
  });
}
