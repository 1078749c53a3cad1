/**
 * Starting the daemon from a config file, in the order that makes it ready soonest: read the TOML,
 * start the operational model's llama-server, and only then load the rest (the config schema, gRPC,
 * HTTP, the service: nearly all of the code, in other chunks of the bundle), so the model loads while
 * Node.js compiles the daemon. The early start reads only what decides llama-server's command line,
 * with the schema's own defaults (defaults.ts); the daemon takes the child over only if the validated
 * config gives the same command line, and ends it otherwise.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'smol-toml';
import { DEFAULTS, prepareSessionsDir, sessionsDirOf } from './defaults.js';
import type { LaunchProfile } from './child.js';
import { LlamaServerLauncher } from './launch.js';
import { isolationSettings } from './isolation.js';

type Table = Record<string, unknown>;
const table = (v: unknown): Table => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Table) : {});
const pick = <T>(t: Table, k: keyof typeof DEFAULTS, type: string): T | undefined => {
  const v = t[k] ?? DEFAULTS[k];
  return typeof v === type ? (v as T) : undefined;
};

/** The operational model's launch fields from the raw TOML (undefined when something is off: the daemon will say what). */
export function earlyProfile(raw: unknown): { binary: string; profile: LaunchProfile } | undefined {
  const runtime = table(table(raw).runtime);
  const models = table(table(raw).models);
  const op = table(models.operational);
  const binary = pick<string>(runtime, 'llama_server', 'string');
  const dir = pick<string>(models, 'model_dir', 'string');
  const name = typeof op.name === 'string' ? op.name : undefined;
  // A split model starts only after its workers were asked for their memory (rpc.ts): no early start.
  if (op.rpc === true) return undefined;
  const ctxSize = pick<number>(op, 'ctx_size', 'number');
  const threads = pick<number>(op, 'threads', 'number');
  const gpuLayers = pick<number>(op, 'gpu_layers', 'number');
  const parallel = pick<number>(op, 'parallel', 'number');
  const mmap = pick<boolean>(op, 'mmap', 'boolean');
  if (!binary || !dir || !name || ctxSize === undefined || threads === undefined || gpuLayers === undefined || parallel === undefined || mmap === undefined) return undefined;
  // Its LoRA adapters, as the router lists them (the daemon discards the early child if a check at load leaves one out).
  const list = Array.isArray(op.adapters) ? op.adapters.map(table) : [];
  if (list.some((a) => typeof a.name !== 'string' || typeof a.file !== 'string')) return undefined;
  const adapters = list.map((a) => ({ name: a.name as string, path: join(dir, a.file as string) }));
  return { binary, profile: { name: name.replace(/\.gguf$/, ''), path: join(dir, name), level: 'operational', ctxSize, threads, gpuLayers, parallel, mmap, ...(adapters.length ? { adapters } : {}) } };
}

export async function serveConfigFile(file: string, overrides: { listen?: string; socket?: string; http?: string } = {}, marks: { modules?: number } = {}): Promise<number> {
  let launcher: LlamaServerLauncher | undefined;
  let early: number | undefined;
  try {
    const raw = parse(readFileSync(file, 'utf8'));
    const e = earlyProfile(raw);
    // Only a model and a binary that are there: anything else is for the daemon to install or refuse.
    if (e && existsSync(e.profile.path) && existsSync(e.binary)) {
      launcher = new LlamaServerLauncher(e.binary);
      // The same --slot-save-path the daemon gives its children (service.ts), or the early child is not taken over.
      const sd = table(table(raw).runtime).sessions_dir;
      const sessions = sessionsDirOf(typeof sd === 'string' ? sd : '');
      if (prepareSessionsDir(sessions) === undefined) launcher.slotSavePath = sessions;
      // Its cgroup and sandbox as the daemon will set them up (the daemon logs the warnings).
      launcher.isolate(isolationSettings(table(raw).runtime, table(raw).models));
      await launcher.prelaunch(e.profile);
      early = Math.round(performance.now());
    }
  } catch {
    // An unreadable or malformed file: readRuntimeConfig reports it properly below.
  }
  const { readRuntimeConfig } = await import('./config.js');
  const config = await readRuntimeConfig(file).catch((err: Error) => {
    launcher?.discardEarly();
    throw err;
  });
  const configRead = Math.round(performance.now());
  if (launcher && config.runtime.llama_server !== launcher.binary) {
    launcher.discardEarly();
    launcher = undefined;
  }
  const { runDaemon } = await import('./daemon.js');
  return runDaemon(config, { overrides, marks: { ...marks, config: configRead, early }, service: { ...(launcher ? { launcher } : {}), configFile: file } });
}
