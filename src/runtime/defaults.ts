/**
 * Defaults of the config keys that decide how the operational model's llama-server is started.
 * The schema (config.ts) takes them from here, and so does the early start (entry.ts), which runs
 * before the schema is loaded: one source for both. Plus `ms()`, which both need too.
 */
import { accessSync, constants, mkdirSync } from 'node:fs';
import { join } from 'node:path';

export const DEFAULTS = {
  llama_server: '/usr/bin/llama-server',
  model_dir: '/var/lib/aios/models',
  ctx_size: 2048,
  threads: 0,
  gpu_layers: 0,
  parallel: 2,
  mmap: true,
} as const;

/** "10s" → milliseconds (the schema has checked the format). */
export function ms(d: string): number {
  const m = /^(\d+)(ms|s|m|h)$/.exec(d)!;
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
}

/**
 * Where saved sessions live (sessions.ts): runtime.sessions_dir, else $STATE_DIRECTORY/sessions
 * (systemd StateDirectory=; in the image /var/lib/aios-runtime/sessions), else
 * /var/lib/aios/sessions. Each model's llama-server gets its own slot directory below it
 * (slotDirOf), so the early start (entry.ts) and the daemon must derive it the same way.
 */
export function sessionsDirOf(configured: string, env: NodeJS.ProcessEnv = process.env): string {
  if (configured) return configured;
  const state = env.STATE_DIRECTORY?.split(':')[0];
  return state ? join(state, 'sessions') : '/var/lib/aios/sessions';
}

/**
 * A model's own slot directory, llama-server's --slot-save-path: the only place its sandbox lets it
 * write saved states (docs/sandbox.md); the daemon moves them between there and the store.
 * `model-<name>` as its cgroup and its child directory are named.
 */
export const slotDirOf = (sessionsDir: string, model: string): string => join(sessionsDir, 'slots', `model-${model.replace(/[^A-Za-z0-9_.-]/g, '_').replace(/^\.+/, '_')}`);

/** Creates the sessions directory (mode 0700) if needed; undefined when it is usable, else why not. */
export function prepareSessionsDir(dir: string): string | undefined {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    accessSync(dir, constants.W_OK | constants.X_OK);
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}
