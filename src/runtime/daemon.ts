/** aios-runtime as a process: config → gRPC server → operational model loaded and probed → READY=1. */
import { exposureProblems, httpTls, type RuntimeConfig } from './config.js';
import { LlamaServerLauncher } from './launch.js';
import { notifyReady } from './notify.js';
import { isolationSettings } from './isolation.js';
import { RuntimeService, type ServiceOptions } from './service.js';
import { leveledLog } from './log.js';
import { serve, type Listening } from './server.js';
import { serveHttp, type HttpListening } from './http.js';
import { AuthGuard, type BackoffOptions } from './auth.js';
import { KeyStore } from './keys.js';
import { loadTls, resolveCredential } from './tls.js';


export interface Daemon {
  service: RuntimeService;
  listening: Listening;
  /** The OpenAI-compatible HTTP API and /metrics (runtime.http_listen), when configured. */
  http?: HttpListening;
  stop(): Promise<void>;
}

/** Milliseconds since the process started (performance.timeOrigin), rounded. */
const sinceStart = (t = performance.now()) => Math.round(t);

export interface DaemonOptions {
  log?: (s: string) => void;
  overrides?: { listen?: string; socket?: string; http?: string };
  service?: ServiceOptions;
  /** The delay before answering repeated authentication failures (tests shorten it; default auth.ts's BACKOFF). */
  backoff?: BackoffOptions;
  /** Start-up moments before startDaemon (ms since the process started), for the start-up report. */
  marks?: { modules?: number; config?: number; early?: number };
}

export async function startDaemon(config: RuntimeConfig, o: DaemonOptions = {}): Promise<Daemon> {
  const journal = !!process.env.JOURNAL_STREAM && !o.log;
  const sink = o.log ?? ((s: string) => process.stderr.write(journal ? `${s}\n` : `aios-runtime: ${s}\n`));
  const log = leveledLog(config.system.log_level, sink, { journal });
  const t0 = performance.now();
  // Access: refuse an exposed listener without TLS/keys before anything starts; read the credentials.
  const rt = config.runtime;
  const listen = o.overrides?.listen ?? rt.listen;
  const httpListen = o.overrides?.http ?? rt.http_listen;
  let tlsMaterial: ReturnType<typeof loadTls>;
  let keys: KeyStore | undefined;
  try {
    const exposure = exposureProblems(rt, { listen, http: httpListen });
    if (exposure.errors.length) throw new Error(exposure.errors.join('; '));
    for (const w of exposure.warnings) log(w, 'warn');
    tlsMaterial = loadTls(rt);
    const stateDir = rt.state_dir || process.env.STATE_DIRECTORY?.split(':')[0] || '';
    keys = rt.http_keys ? new KeyStore({ buildFile: resolveCredential(rt.http_keys, 'http_keys'), stateDir: stateDir || undefined }) : undefined;
  } catch (e) {
    // A llama-server started early (entry.ts) must not outlive a refused start.
    if (o.service?.launcher instanceof LlamaServerLauncher) o.service.launcher.discardEarly();
    throw e;
  }

  const launcher = o.service?.launcher ?? new LlamaServerLauncher(config.runtime.llama_server);
  if (launcher instanceof LlamaServerLauncher) {
    launcher.log = (s) => log(s, 'debug');
    // Per-model cgroups and the sandbox (isolation.ts): each thing this host cannot do is one warning, never a refusal.
    const iso = launcher.isolate(isolationSettings(rt, config.models, (w) => log(w, 'warn')));
    for (const w of iso.warnings.splice(0)) log(w, 'warn');
    log(iso.describe());
  }
  let service: RuntimeService;
  try {
    // Reads the strategic layer's keys and ledger too: a missing credential refuses the start.
    service = new RuntimeService(config, log, { ...o.service, launcher });
  } catch (e) {
    if (launcher instanceof LlamaServerLauncher) launcher.discardEarly();
    throw e;
  }
  const guard = new AuthGuard({ log, events: service.events, backoff: o.backoff });
  // The operational model starts loading first: llama-server reads its weights while the front
  // ends are set up (the daemon is ready only when both are done).
  const starting = service.start();
  starting.catch(() => {});
  let listening: Listening | undefined;
  let http: HttpListening | undefined;
  try {
    listening = await serve(service, { listen, socket: o.overrides?.socket ?? rt.socket, socketGroup: rt.socket_group, tls: tlsMaterial.grpc, guard, keys, log });
    const where = [listening.tcpPort ? `${listen.replace(/:\d+$/, '')}:${listening.tcpPort}${listening.tls ? ' (mutual TLS)' : ''}` : '', listening.socket ? `unix:${listening.socket}` : ''].filter(Boolean);
    log(where.length ? `gRPC on ${where.join(' and ')}` : 'no gRPC listener (runtime.listen and runtime.socket are both "")');
    if (httpListen) {
      const tls = httpTls(rt, httpListen) ? tlsMaterial.http : undefined;
      http = await serveHttp(service, httpListen, log, { keys, metricsAuth: rt.metrics_auth, tls, guard });
      log(`HTTP API (OpenAI-compatible, /metrics) on ${httpListen.replace(/:\d+$/, '')}:${http.port}${tls ? ' (TLS)' : ''}${keys ? `, API keys required (${keys.list().filter((k) => !k.revoked).length} valid)` : ''}`);
    }
    log(`front ends up after ${Math.round(performance.now() - t0)} ms`, 'debug');
    const frontEnds = performance.now();
    await starting;
    const s = service.startup;
    // One line that says where the start-up went (qemu-test prints it from the guest's journal).
    log(
      `startup (ms since the process started): modules loaded ${o.marks?.modules ?? '-'}, config read ${o.marks?.config ?? '-'}, ` +
        `${o.marks?.early ? `llama-server started early ${o.marks.early}, ` : ''}` +
        `operational model loading ${sinceStart(s.loadFrom)} → ready ${sinceStart(s.loadedAt)} (${sinceStart(s.loadedAt - s.loadFrom)}), ` +
        `probe → ${sinceStart(s.probedAt)} (${sinceStart(s.probedAt - s.loadedAt)}), front ends up ${sinceStart(frontEnds)}, ready ${sinceStart()}`,
    );
  } catch (e) {
    await http?.close(1000);
    if (listening) await listening.shutdown(1000);
    else await service.stop();
    throw e;
  }
  log(`ready ${Math.round(performance.now() - t0)} ms after the daemon started`);
  await notifyReady();
  const l = listening;
  return {
    service,
    listening: l,
    http,
    stop: async () => {
      await http?.close(); // stop accepting; HTTP answers in flight finish first
      await l.shutdown();
    },
  };
}

/** `aios runtime serve` and the image's daemon: runs until SIGTERM/SIGINT, then shuts down cleanly. */
export async function runDaemon(config: RuntimeConfig, o: Pick<DaemonOptions, 'overrides' | 'marks' | 'service'> = {}): Promise<number> {
  const d = await startDaemon(config, o);
  await new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      process.stderr.write(`aios-runtime: ${sig}: stopping\n`);
      resolve();
    };
    // SIGHUP: the config file's adapter lists again (service.reload; `aios runtime reload` is the same over gRPC).
    process.on('SIGHUP', () => {
      d.service.reloadFile().catch((e: Error) => process.stderr.write(`aios-runtime: SIGHUP: ${e.message}\n`));
    });
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  await d.stop();
  return 0;
}
