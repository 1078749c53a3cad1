/** Every external command goes through here (execa), with its output kept for error messages. */
import { execa, type Options } from 'execa';
import { appendFile } from 'node:fs/promises';

export interface RunOptions {
  env?: Record<string, string>;
  /** false: `env` is the whole environment (default: it extends process.env). */
  extendEnv?: boolean;
  cwd?: string;
  /** Append the command and its output to this log file. */
  log?: string;
  /** Called with each output line (stdout and stderr interleaved). */
  onLine?: (line: string) => void;
  input?: string;
  signal?: AbortSignal;
  /** Do not throw on non-zero exit. */
  reject?: boolean;
}

export class CommandError extends Error {
  constructor(
    readonly argv: string[],
    readonly exitCode: number | undefined,
    readonly output: string,
  ) {
    const tail = output.trim().split('\n').slice(-25).join('\n');
    super(`command failed (exit ${exitCode ?? 'signal'}): ${argv.join(' ')}\n${tail}`);
    this.name = 'CommandError';
  }
}

export async function run(argv: string[], opts: RunOptions = {}): Promise<{ stdout: string; all: string; exitCode: number }> {
  const [cmd, ...args] = argv;
  if (!cmd) throw new Error('run: empty argv');
  if (opts.log) await appendFile(opts.log, `\n$ ${argv.join(' ')}\n`);
  const options: Options = {
    env: opts.env,
    extendEnv: opts.extendEnv ?? true,
    cwd: opts.cwd,
    all: true,
    reject: false,
    input: opts.input,
    cancelSignal: opts.signal,
    stdin: opts.input === undefined ? 'ignore' : undefined,
    lines: false,
  };
  const child = execa(cmd, args, options);
  let buffered = '';
  if (opts.onLine || opts.log) {
    child.all?.on('data', (chunk: Buffer) => {
      const text = chunk.toString();
      if (opts.log) void appendFile(opts.log, text);
      if (opts.onLine) {
        buffered += text;
        const lines = buffered.split('\n');
        buffered = lines.pop() ?? '';
        for (const l of lines) opts.onLine(l);
      }
    });
  }
  const res = await child;
  const exitCode = typeof res.exitCode === 'number' ? res.exitCode : -1;
  if (exitCode !== 0 && opts.reject !== false) {
    if ((res as { code?: string }).code === 'ENOENT' || /ENOENT/.test(String(res.message ?? ''))) {
      throw new CommandError(argv, undefined, `${cmd}: command not found`);
    }
    throw new CommandError(argv, res.exitCode, String(res.all ?? ''));
  }
  return { stdout: String(res.stdout ?? ''), all: String(res.all ?? ''), exitCode };
}

/** Is a command on PATH? */
export async function which(cmd: string): Promise<string | undefined> {
  const r = await execa('sh', ['-c', `command -v "$1"`, 'sh', cmd], { reject: false });
  return r.exitCode === 0 ? String(r.stdout).trim() : undefined;
}

/**
 * Starts a command whose stdout is consumed as a stream (e.g. a decompressor). `done` resolves
 * when it exits 0 and rejects with a CommandError (stderr tail) otherwise; `kill` stops it early.
 */
export function spawnStream(argv: string[]): { stdout: NodeJS.ReadableStream; done: Promise<void>; kill: () => void } {
  const [cmd, ...args] = argv;
  if (!cmd) throw new Error('spawnStream: empty argv');
  const child = execa(cmd, args, { buffer: false, stdin: 'ignore', stdout: 'pipe', stderr: 'pipe', reject: false });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    if (stderr.length < 64 * 1024) stderr += c.toString();
  });
  let killed = false;
  const done = (async () => {
    const res = await child;
    if (killed) return;
    const code = typeof res.exitCode === 'number' ? res.exitCode : undefined;
    if (code !== 0) {
      if ((res as { code?: string }).code === 'ENOENT') throw new CommandError(argv, undefined, `${cmd}: command not found`);
      throw new CommandError(argv, code, stderr);
    }
  })();
  done.catch(() => {});
  return {
    stdout: child.stdout!,
    done,
    kill: () => {
      killed = true;
      child.kill();
    },
  };
}
