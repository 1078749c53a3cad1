/**
 * The model sandbox's memory limit in a booted image (issue 16), as `aios qemu-test` can run it
 * through QEMU's port forwarding with the image's admin certificate: a second model is loaded with
 * LoadModel and a cgroup memory.max far below what it needs (memory_limit_bytes); the kernel kills
 * it inside its own cgroup while it loads, the runtime reports "out of memory: limit N MiB" (the
 * LoadModel error, ListModels: failed, oom_kills), and the operational model and the daemon answer
 * every request sent meanwhile (Infer and HealthCheck in a loop, from before the load to after it).
 */
import type { ModelStatus } from '../runtime/client.js';

export interface OomCheck {
  ok: boolean;
  /** What happened, in one line (why not, when not ok). */
  detail: string;
  /** The LoadModel error. */
  loadError?: string;
  /** ListModels' entry of the model afterwards. */
  model?: Pick<ModelStatus, 'name' | 'state' | 'error' | 'oom_kills' | 'memory_limit_bytes'>;
  /** Requests to the operational model during the check, and those that failed (with why). */
  answers: number;
  failures: string[];
  /** HealthChecks during the check, and those that failed. */
  health: number;
  healthFailures: string[];
  seconds: number;
}

export const OOM_MODEL = 'oom-check';
const MiB = 1024 * 1024;

/**
 * `modelPath`: a GGUF file in the image's model dir (the operational model's own file, loaded under
 * another name); `limitBytes`: the memory.max to give it (default 8 MiB: llama-server needs tens of
 * MiB for even the smallest model's buffers).
 */
export async function oomCheck(address: string, tlsDir: string | undefined, modelPath: string, limitBytes = 8 * MiB): Promise<OomCheck> {
  const { connectRuntime, unary } = await import('../runtime/client.js');
  const c = connectRuntime(address, { tlsDir });
  const t0 = Date.now();
  const r: OomCheck = { ok: false, detail: '', answers: 0, failures: [], health: 0, healthFailures: [], seconds: 0 };
  let stop = false;
  let loading = false;
  let answeredBefore = 0;
  let answeredAfter = 0;
  const msg = (e: unknown) => String((e as Error).message ?? e).slice(0, 300);
  // The other model and the daemon, throughout: from before the load until one answer after it.
  const infers = (async () => {
    while (!stop) {
      try {
        const a = await unary(c, 'Infer', { prompt: 'Respond with OK if you are working.', intelligence_level: 'operational', max_tokens: 4, temperature: 0, grammar: 'root ::= "OK"' }, 120_000);
        if (a.text !== 'OK') r.failures.push(`answer "${a.text}"`);
        else {
          r.answers++;
          if (!loading && !r.loadError && !r.detail) answeredBefore++;
          if (loading === false && (r.loadError || r.detail)) answeredAfter++;
        }
      } catch (e) {
        r.failures.push(msg(e));
      }
      if (r.failures.length > 5) return;
    }
  })();
  const health = (async () => {
    while (!stop) {
      try {
        const h = await unary(c, 'HealthCheck', {}, 30_000);
        r.health++;
        if (h.status !== 'SERVING') r.healthFailures.push(`status ${h.status}`);
      } catch (e) {
        r.healthFailures.push(msg(e));
      }
      if (r.healthFailures.length > 5) return;
      await new Promise((res) => setTimeout(res, 500));
    }
  })();
  const until = async (cond: () => boolean, ms: number) => {
    for (const end = Date.now() + ms; !cond() && Date.now() < end && r.failures.length <= 5; ) await new Promise((res) => setTimeout(res, 100));
  };
  try {
    await until(() => answeredBefore > 0, 120_000);
    loading = true;
    try {
      const loaded = await unary(c, 'LoadModel', { model_name: OOM_MODEL, model_path: modelPath, context_length: 512, memory_limit_bytes: limitBytes }, 300_000);
      r.detail = `LoadModel succeeded (${loaded.state}) with memory.max ${limitBytes / MiB} MiB: no out-of-memory kill`;
    } catch (e) {
      r.loadError = msg(e);
    }
    loading = false;
    const m = (await unary(c, 'ListModels', {}, 30_000)).models.find((x) => x.name === OOM_MODEL);
    if (m) r.model = { name: m.name, state: m.state, error: m.error, oom_kills: m.oom_kills, memory_limit_bytes: m.memory_limit_bytes };
    await until(() => answeredAfter > 0, 120_000);
  } catch (e) {
    r.detail ||= `ListModels failed: ${msg(e)}`;
  } finally {
    stop = true;
    await Promise.all([infers, health]);
    // Leave the machine as it was (a failed entry unloads without a process).
    await unary(c, 'UnloadModel', { model_name: OOM_MODEL }, 60_000).catch(() => {});
    c.close();
  }
  r.seconds = Math.round((Date.now() - t0) / 100) / 10;
  const expect = `out of memory: limit ${limitBytes / MiB} MiB`;
  if (!r.detail) {
    if (!r.loadError?.includes(expect)) r.detail = `LoadModel's error does not say "${expect}": ${r.loadError}`;
    else if (!r.model) r.detail = `${OOM_MODEL} is not in ListModels`;
    else if (r.model.state !== 'failed' || !r.model.error.includes(expect) || Number(r.model.oom_kills) < 1) r.detail = `ListModels: ${JSON.stringify(r.model)}`;
    else if (r.failures.length || !answeredBefore || !answeredAfter) r.detail = `the operational model: ${r.answers} answers (${answeredBefore} before the load, ${answeredAfter} after it), failures: ${r.failures.join('; ') || 'none'}`;
    else if (r.healthFailures.length || r.health === 0) r.detail = `HealthCheck: ${r.health} answered, failures: ${r.healthFailures.join('; ') || 'none'}`;
    else {
      r.ok = true;
      r.detail = `${OOM_MODEL} killed by the kernel in its cgroup (${expect}, ${r.model.oom_kills} OOM kill(s), state ${r.model.state}); the operational model answered ${r.answers} request(s) and HealthCheck ${r.health} time(s) meanwhile, none failed (${r.seconds} s)`;
    }
  }
  return r;
}
