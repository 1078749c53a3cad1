/** aios-runtime as a process: config → gRPC server → operational model loaded and probed → READY=1. */
import { readFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { parse } from 'smol-toml';
import { RuntimeConfigSchema, type RuntimeConfig } from './config.js';
import { RuntimeService } from './service.js';
import { serve, type Listening } from './server.js';
import { serveHttp, type HttpListening } from './http.js';

export async function readRuntimeConfig(file: string): Promise<RuntimeConfig> {
  let raw: unknown;
  try {
    raw = parse(await readFile(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: ${(e as Error).message.split('\n')[0]}`);
  }
  const r = RuntimeConfigSchema.safeParse(raw);
  if (!r.success) throw new Error(`${file}: ` + r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  return r.data;
}

/** Tells systemd we are ready (Type=notify). Node has no unix datagram sockets: systemd-notify does it. */
function notifyReady(): Promise<void> {
  if (!process.env.NOTIFY_SOCKET) return Promise.resolve();
  return new Promise((resolve) => execFile('systemd-notify', ['--ready', `--status=serving`], () => resolve()));
}

export interface Daemon {
  service: RuntimeService;
  listening: Listening;
  /** The OpenAI-compatible HTTP API and /metrics (runtime.http_listen), when configured. */
  http?: HttpListening;
  stop(): Promise<void>;
}

export async function startDaemon(config: RuntimeConfig, o: { log?: (s: string) => void; overrides?: { listen?: string; socket?: string; http?: string } } = {}): Promise<Daemon> {
  const log = o.log ?? ((s: string) => process.stderr.write(`aios-runtime: ${s}\n`));
  const service = new RuntimeService(config, log);
  const listening = await serve(service, {
    listen: o.overrides?.listen ?? config.runtime.listen,
    socket: o.overrides?.socket ?? config.runtime.socket,
  });
  log(`listening${listening.tcpPort ? ` on 127.0.0.1:${listening.tcpPort}` : ''}${listening.socket ? ` and unix:${listening.socket}` : ''}`);
  let http: HttpListening | undefined;
  try {
    const httpListen = o.overrides?.http ?? config.runtime.http_listen;
    if (httpListen) {
      http = await serveHttp(service, httpListen);
      log(`HTTP API (OpenAI-compatible, /metrics) on ${httpListen.replace(/:\d+$/, '')}:${http.port}`);
    }
    await service.start();
  } catch (e) {
    await http?.close(1000);
    await listening.shutdown(1000);
    throw e;
  }
  await notifyReady();
  return {
    service,
    listening,
    http,
    stop: async () => {
      await http?.close(); // stop accepting; HTTP answers in flight finish first
      await listening.shutdown();
    },
  };
}

/** `aios runtime serve`: runs until SIGTERM/SIGINT, then shuts down cleanly. */
export async function runDaemon(configFile: string, overrides: { listen?: string; socket?: string; http?: string } = {}): Promise<number> {
  const config = await readRuntimeConfig(configFile);
  const d = await startDaemon(config, { overrides });
  await new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      process.stderr.write(`aios-runtime: ${sig}: stopping\n`);
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  await d.stop();
  return 0;
}
