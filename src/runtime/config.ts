/**
 * Schema of /etc/aios/config.toml. aios-runtime reads the file with this schema, and the
 * image build validates the file it writes with the same one. Imports nothing from the build side.
 */
import { isIP } from 'node:net';
import { readFile } from 'node:fs/promises';
import { parse } from 'smol-toml';
import { z } from 'zod';
import { DEFAULTS } from './defaults.js';

const duration = z.string().regex(/^\d+(ms|s|m|h)$/, { message: 'must be a duration such as 500ms, 10s, 5m' });
const size = z.string().regex(/^\d+(\.\d+)?[KMGT]?$/, { message: 'must be a size such as 512M, 6G or a number of bytes' });

export { ms } from './defaults.js';

const Probe = z.strictObject({
  prompt: z.string().default('Respond with OK if you are working.'),
  /** GBNF grammar constraining the answer (a model with random weights cannot say OK unaided). */
  grammar: z.string().optional(),
  /** Regular expression the answer must match. */
  expect: z.string().default('OK'),
});

/** One LoRA adapter of a layer ([[models.<layer>.adapters]]; src/runtime/adapters.ts). */
const Adapter = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, { message: 'must be 1-64 of A-Z a-z 0-9 _ . -' }).describe('what requests call it'),
  file: z.string().regex(/^[^,/][^,]*$/, { message: 'must be a file name in model_dir (no leading "/", no comma)' }).describe('LoRA adapter GGUF in model_dir'),
  description: z.string().default('').describe('what it is for: matched against a request\'s task (cosine similarity of embeddings) when the request names no adapters'),
  scale: z.number().min(-4).max(4).default(1).describe('scale applied when a request does not give one'),
});

/**
 * Why an [[runtime.rpc_workers]] address cannot work, or undefined when it is an IPv4 literal and a
 * TCP port. IPv6 is refused: the pinned llama.cpp splits an RPC endpoint at its first ':' (client and
 * server) and ggml-rpc-server binds an IPv4 socket only (docs/fleets.md).
 */
export function rpcWorkerAddressProblem(a: string): string | undefined {
  if (/^\[[0-9a-fA-F:.]*:[0-9a-fA-F:.]*\](:\d*)?$/.test(a) || (a.match(/:/g)?.length ?? 0) > 1) {
    return `"${a}" is an IPv6 address: the pinned llama.cpp splits an RPC endpoint at its first ':' and ggml-rpc-server listens on IPv4 only, so no IPv6 worker can be reached; give the worker's IPv4 address and port, such as 10.0.0.2:50052`;
  }
  const m = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(a);
  if (!m || isIP(m[1]!) !== 4) return `"${a}" must be an IPv4 address and port such as 10.0.0.2:50052 (no host names: the worker's firewall admits its heads by address)`;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return `"${a}": the port must be 1-65535`;
  return undefined;
}

/** One llama.cpp RPC worker of this head ([[runtime.rpc_workers]]; also the recipe's runtime.rpc_workers). */
export const RpcWorker = z.strictObject({
  address: z
    .string()
    .superRefine((a, ctx) => {
      const why = rpcWorkerAddressProblem(a);
      if (why) ctx.addIssue({ code: 'custom', message: why });
    })
    .describe('IPv4 address:port of its ggml-rpc-server'),
  memory: size.or(z.literal('')).default('').describe('most this head may place there; "" = what the worker reports free (a CPU worker reports all of its RAM)'),
});

const ModelLayer = z.strictObject({
  name: z.string().describe('GGUF file name in model_dir'),
  ctx_size: z.number().int().min(64).default(DEFAULTS.ctx_size),
  threads: z.number().int().min(0).default(DEFAULTS.threads).describe('0 = physical cores'),
  gpu_layers: z.number().int().min(-1).default(DEFAULTS.gpu_layers),
  parallel: z.number().int().min(1).max(64).default(DEFAULTS.parallel).describe('llama-server slots (concurrent requests per model)'),
  mmap: z.boolean().default(DEFAULTS.mmap),
  probe: Probe.prefault({ grammar: 'root ::= "OK"' }),
  always_loaded: z.boolean().default(false).describe('loaded when the runtime starts and pinned (never evicted or unloaded for idleness); the operational model always is'),
  load_on_demand: z.boolean().default(true).describe('false: a request for this model while it is not loaded fails (FAILED_PRECONDITION) instead of loading it; load it with `aios runtime load`'),
  max_tokens: z.number().int().positive().default(512).describe('tokens generated when a request sets none'),
  max_tokens_limit: z.number().int().positive().optional().describe('most tokens a request may ask for (more is refused: INVALID_ARGUMENT / HTTP 400); default: ctx_size'),
  temperature: z.number().min(0).max(2).default(0.2).describe('temperature when a request sets none'),
  unload_after_idle: z.string().regex(/^\d+(ms|s|m|h)$/).default('5m'),
  cpus: z
    .string()
    .regex(/^(auto|\d+(-\d+)?(,\d+(-\d+)?)*)?$/, { message: 'must be "auto", "" or a CPU list such as "0-3" or "0,2,4"' })
    .default('auto')
    .describe('cpuset.cpus of its cgroup: "auto" = its own physical cores (threads of them, 0 = an equal share), without overlap, when the machine has enough for every auto layer (else not pinned); "" = every CPU; or a list such as "0-3"'),
  cpu_weight: z.number().int().min(1).max(10000).default(100).describe('cpu.weight of its cgroup (1–10000; 100 = an equal share when CPUs are contended)'),
  adapters: z
    .array(Adapter)
    .default([])
    .superRefine((a, ctx) => {
      const seen = new Set<string>();
      a.forEach((x, i) => {
        if (seen.has(x.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `adapter "${x.name}" is configured twice` });
        seen.add(x.name);
      });
    })
    .describe('LoRA adapters loaded (unapplied) with the model; a request applies some by name or by task'),
  rpc: z.boolean().default(false).describe('split across [[runtime.rpc_workers]] with llama.cpp\'s RPC backend (llama-server --rpc): its layers and their KV cache go to the workers in proportion to the free memory each reports; gpu_layers = 0 then means all of them (docs/fleets.md)'),
});

/** [models.embedding]: the model that embeds tasks and adapter descriptions for adapter selection (llama-server --embeddings). */
const EmbeddingLayer = z.strictObject({
  name: z.string().describe('GGUF file name in model_dir'),
  ctx_size: z.number().int().min(64).default(512),
  threads: z.number().int().min(0).default(DEFAULTS.threads).describe('0 = physical cores'),
  parallel: z.number().int().min(1).max(64).default(1),
  mmap: z.boolean().default(DEFAULTS.mmap),
  pooling: z.enum(['mean', 'cls', 'last']).default('mean').describe('how token embeddings become one vector (llama-server --pooling)'),
  min_similarity: z.number().min(-1).max(1).default(0.7).describe('an adapter is selected for a task when the cosine similarity of their embeddings is at least this'),
  max_adapters: z.number().int().min(1).max(16).default(3).describe('most adapters selected for one task'),
  unload_after_idle: duration.default('5m'),
});

/** A string that looks like an API key rather than a credential name or a path. */
export function looksLikeKey(v: string): boolean {
  return /^(sk-|sk_|xai-|AIza|AKIA|ghp_)/.test(v) || (/^[A-Za-z0-9_\-.]{32,}$/.test(v) && /\d/.test(v) && /[A-Za-z]/.test(v));
}

const price = z.number().min(0).optional();

/** One cloud provider of the strategic layer ([api.<name>]; docs/runtime.md#strategic-layer). */
export const CloudProviderSchema = z
  .strictObject({
    provider: z.enum(['anthropic', 'openai']).describe('anthropic (Messages API) | openai (chat completions: OpenAI, or any compatible endpoint such as a remote aios or vLLM)'),
    model: z.string().min(1).describe('the provider\'s model name'),
    base_url: z.string().default('').describe('"" = the provider\'s public endpoint; else as the official client takes it (OpenAI-compatible: ending in /v1)'),
    key_file: z.string().default('').describe('the API key: a systemd credential name (the image\'s unit imports it with ImportCredential= from /etc/credstore/<name>) or an absolute path (mode 0600); "" = a credential named like the table. Never the key itself'),
    max_tokens: z.number().int().positive().default(4096).describe('tokens generated when a request sets none, and the most it may ask for'),
    monthly_budget_usd: z.number().min(0).describe('spend allowed per calendar month (UTC); a request whose worst case does not fit is not sent'),
    rate_limit_rpm: z.number().int().min(0).default(0).describe('requests per minute (token bucket); 0 = no limit'),
    rate_limit_tpm: z.number().int().min(0).default(0).describe('tokens per minute (worst case: prompt bound + max_tokens); 0 = no limit'),
    fallback_only: z.boolean().default(false).describe('used only when the providers before it cannot answer'),
    timeout: duration.default('60s').describe('per call; a timeout is a failure that tries the next provider'),
    price_input_per_mtok: price.describe('USD per million input tokens (default: the shipped price table)'),
    price_output_per_mtok: price,
    price_cache_read_per_mtok: price,
    price_cache_write_per_mtok: price,
    price_reasoning_per_mtok: price,
    // Refused with a message that says how to give a key (superRefine below).
    api_key: z.unknown().optional(),
    key: z.unknown().optional(),
  })
  .superRefine((p, ctx) => {
    for (const k of ['api_key', 'key'] as const) {
      if (p[k] !== undefined) ctx.addIssue({ code: 'custom', path: [k], message: 'a key never goes into the config: put it in a file and name it with key_file (a systemd credential name: the unit imports /etc/credstore/<name>; or an absolute path with mode 0600)' });
    }
    if (looksLikeKey(p.key_file)) ctx.addIssue({ code: 'custom', path: ['key_file'], message: 'looks like a key itself: key_file names a systemd credential (ImportCredential= from /etc/credstore) or an absolute path with mode 0600 that holds the key, never the key' });
    if (looksLikeKey(p.base_url.replace(/^.*[?&=/]/, ''))) ctx.addIssue({ code: 'custom', path: ['base_url'], message: 'seems to carry a key: keys go into key_file only' });
  });

export type CloudProviderConfig = z.output<typeof CloudProviderSchema>;

/** [api] as the runtime reads it: the strategic layer's settings, and one table per provider by name. */
export interface ApiConfig {
  local_fallback: '' | 'operational' | 'tactical';
  ledger_dir: string;
  [name: string]: CloudProviderConfig | string;
}

/** [api]: the strategic layer's settings and one [api.<name>] table per cloud provider, in order of preference. */
const Api = z
  .object({
    local_fallback: z.enum(['', 'operational', 'tactical']).default('').describe('"" = none; else the local level that answers (marked as such) when no cloud provider can'),
    ledger_dir: z.string().default('').describe('the spend ledger; "" = $STATE_DIRECTORY/ledger (systemd StateDirectory=), else /var/lib/aios/ledger'),
  })
  // (typed by hand: zod's type of an object with a catchall loses the named keys)
  .catchall(CloudProviderSchema) as unknown as z.ZodType<ApiConfig, Record<string, unknown>>;

/** The [api.<name>] tables in config order. */
export function cloudProviders(c: { api: Record<string, unknown> }): [string, CloudProviderConfig][] {
  return Object.entries(c.api).filter(([, v]) => typeof v === 'object' && v !== null) as [string, CloudProviderConfig][];
}

export const RuntimeConfigSchema = z.strictObject({
  runtime: z
    .strictObject({
      llama_server: z.string().default(DEFAULTS.llama_server),
      socket: z.string().default('/run/aios/runtime.sock').describe('unix socket (mode 0660); "" = none'),
      listen: z.string().default('127.0.0.1:50051').describe('TCP host:port; "" = none. Anything but loopback must be set explicitly'),
      http_listen: z.string().default('').describe('OpenAI-compatible HTTP API and /metrics, host:port (the image: 127.0.0.1:8080); "" = none'),
      health_interval: duration.default('10s'),
      load_timeout: duration.default('120s'),
      request_timeout: duration.default('120s'),
      max_restarts: z.number().int().min(0).default(5).describe('crashes within 5 minutes before a model is marked failed'),
      // Scheduling: priority queues, memory budget, auto-install.
      max_queue_per_model: z.number().int().min(1).default(64).describe('requests waiting per model beyond its slots; more are refused at once (RESOURCE_EXHAUSTED / 429)'),
      max_queue_total: z.number().int().min(1).default(256).describe('requests waiting over all models'),
      queue_aging: duration.default('10s').describe('every this long in the queue raises a request\'s priority by 10 points (batch 50 reaches realtime 90 after 4 periods)'),
      memory_budget: size.or(z.literal('auto')).default('auto').describe('RAM for models; "auto" = total memory (or the service cgroup\'s MemoryHigh/MemoryMax, if lower) minus memory_reserve'),
      memory_reserve: size.default('512M').describe('left to the OS and the daemon when memory_budget = "auto"'),
      vram_budget: size.or(z.literal('auto')).default('auto').describe('GPU memory for models with gpu_layers ≠ 0; "auto" = the first NVIDIA GPU\'s memory (nvidia-smi) minus 5 %, none found = not budgeted'),
      auto_install: z.boolean().default(false).describe('download a catalog model (checked sha256) on its first request'),
      catalog: z.string().default('').describe('model catalog TOML; "" = the catalog shipped beside the runtime'),
      unload_after_idle: duration.default('5m').describe('idle timeout of catalog models loaded by a request; configured layers use their own; models loaded with LoadModel stay until unloaded or evicted'),
      // Access (docs/runtime.md#access-and-authentication). Files: a systemd credential name (read
      // from $CREDENTIALS_DIRECTORY, e.g. LoadCredential=server.key:…) or an absolute path.
      tls_cert: z.string().default('').describe('server certificate (PEM) for gRPC over TCP (and HTTP with http_tls): credential name or absolute path; "" = no TLS'),
      tls_key: z.string().default('').describe('its private key: credential name or absolute path'),
      tls_client_ca: z.string().default('').describe('CA certificate(s) that sign client certificates (mutual TLS; the OU is the scope: admin or infer): credential name or absolute path'),
      insecure_listen: z.boolean().default(false).describe('true: allow listen / http_listen beyond loopback without TLS or keys (anyone who reaches them is admin); warned about at every start'),
      http_keys: z.string().default('').describe('hashed HTTP API keys file (credential name or absolute path): with it, the HTTP API needs "Authorization: Bearer <key>"; "" = no keys (loopback only)'),
      http_tls: z.enum(['auto', 'on', 'off']).default('auto').describe('TLS on the HTTP API with tls_cert/tls_key: auto = when http_listen is not loopback'),
      metrics_auth: z.enum(['api', 'open', 'metrics']).default('api').describe('/metrics: api = the same rule as the API (any valid key when keys are on), open = no key, metrics = a key with the metrics (or admin) scope'),
      socket_group: z.string().default('').describe('group the unix socket is given (mode 0660): its members have admin access; "" = the daemon\'s own group'),
      // Model isolation (issue 16; docs/sandbox.md).
      sandbox: z.enum(['auto', 'off']).default('auto').describe('each llama-server in a sandbox (own user, network and PID namespaces: no network, a unix socket; reads only /usr and its model; writes only to its own directory and slot directory; no_new_privs; its own seccomp filter): auto = util-linux unshare + setpriv (Landlock) where they work, else bubblewrap, else one warning; off = never'),
      cgroup: z.string().default('auto').describe('per-model cgroups: auto = the daemon\'s own cgroup v2 when delegated (systemd Delegate=yes), off = none, or a writable cgroup directory (v2, or a v1 memory hierarchy)'),
      child_memory_margin: z.number().min(0).max(10).default(0.1).describe('memory.max of a model\'s cgroup = its budgeted footprint × (1 + this)'),
      child_swap_max: size.default('0').describe('memory.swap.max of each model\'s cgroup (zram counts as swap): 0 = a model that outgrows its limit is OOM-killed instead of paging to zram'),
      child_dir: z.string().default('').describe('parent of each model child\'s own directory (its unix socket); "" = $RUNTIME_DIRECTORY/models, else a private dir under /tmp'),
      state_dir: z.string().default('').describe('where keys made with `aios runtime keys create` and revocations are kept (http-keys.json); "" = $STATE_DIRECTORY (systemd StateDirectory=), else none'),
      // Saved sessions (src/runtime/sessions.ts; docs/runtime.md#sessions).
      sessions_dir: z.string().default('').describe('saved sessions (conversation + KV state per model file): "" = $STATE_DIRECTORY/sessions (systemd StateDirectory=), else /var/lib/aios/sessions; also llama-server\'s --slot-save-path'),
      sessions_max_bytes: size.default('2G').describe('most bytes all saved sessions may take; past it the least recently used are removed (0 = no saved KV state, conversations only)'),
      // Fleets (issue 20; docs/fleets.md): the llama.cpp RPC workers a model with rpc = true is split across.
      rpc_workers: z
        .array(RpcWorker)
        .default([])
        .superRefine((w, ctx) => {
          const seen = new Set<string>();
          w.forEach((x, i) => {
            if (seen.has(x.address)) ctx.addIssue({ code: 'custom', path: [i, 'address'], message: `worker ${x.address} is listed twice` });
            seen.add(x.address);
          });
        })
        .describe('[[runtime.rpc_workers]]: ggml-rpc-server workers (address = "10.0.0.2:50052", an IPv4 address: the worker\'s firewall admits heads by address, and the pinned llama.cpp reaches no IPv6 worker; memory = most this head may use there, "" = what it reports free)'),
      rpc_query_timeout: duration.default('10s').describe('how long the workers may take to report their memory before a split model\'s load'),
    })
    .prefault({}),
  system: z
    .strictObject({
      hostname: z.string().default('aios'),
      log_level: z.enum(['debug', 'info', 'warn', 'error']).default('info').describe('lowest level aios-runtime logs (to the journal under systemd, with syslog priorities)'),
    })
    .prefault({}),
  models: z
    .strictObject({
      runtime: z.literal('llama-cpp').default('llama-cpp'),
      model_dir: z.string().default(DEFAULTS.model_dir),
      operational: ModelLayer.optional(),
      tactical: ModelLayer.optional(),
      embedding: EmbeddingLayer.optional(),
    })
    // A model is named by its file (clients ask for "tiny" or "tiny.gguf"): two layers of one file
    // would be one name for two launch profiles, so one would silently replace the other.
    .superRefine((m, ctx) => {
      const stem = (n: string) => n.replace(/\.gguf$/, '');
      if (m.operational && m.tactical && stem(m.operational.name) === stem(m.tactical.name)) {
        ctx.addIssue({
          code: 'custom',
          path: ['tactical', 'name'],
          message: `"${m.tactical.name}" is also [models.operational]'s file: a model is named by its file, so each layer needs its own (copy or link the file under another name to serve it with two settings)`,
        });
      }
      for (const l of ['operational', 'tactical'] as const) {
        if (m.embedding && m[l] && stem(m[l].name) === stem(m.embedding.name)) {
          ctx.addIssue({ code: 'custom', path: ['embedding', 'name'], message: `"${m.embedding.name}" is also [models.${l}]'s file: the embedding child runs with --embeddings, so it needs its own file name` });
        }
      }
    })
    .prefault({}),
  api: Api.prefault({}),
}).superRefine((c, ctx) => {
  for (const level of ['operational', 'tactical'] as const) {
    if (c.models[level]?.rpc && !c.runtime.rpc_workers.length) {
      ctx.addIssue({ code: 'custom', path: ['models', level, 'rpc'], message: 'a model split with rpc = true needs its workers: list them as [[runtime.rpc_workers]] address = "10.0.0.2:50052"' });
    }
  }
});

export type RuntimeConfig = z.output<typeof RuntimeConfigSchema>;

/** Reads and validates a config.toml; errors name the file and every key path that is wrong. */
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

/** Is this host (of a host:port) loopback? 127.0.0.0/8, ::1, localhost. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || /^::ffff:127\./.test(h);
}

/** The host of "host:port" ("[::1]:50051" → "::1"; ":50051" → "" = every address). */
export const hostOf = (listen: string) => listen.replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');

const TLS_KEYS = ['tls_cert', 'tls_key', 'tls_client_ca'] as const;

/** Whether the HTTP API uses TLS (runtime.http_tls; auto = when not loopback). */
export function httpTls(rt: Pick<RuntimeConfig['runtime'], 'http_tls'>, httpListen: string): boolean {
  return rt.http_tls === 'on' || (rt.http_tls === 'auto' && !!httpListen && !isLoopbackHost(hostOf(httpListen)));
}

/**
 * What the daemon refuses (errors) or warns about (warnings) in how it is exposed: a TCP listener
 * beyond loopback needs mutual TLS (gRPC) or keys and TLS (HTTP), unless runtime.insecure_listen.
 * `listen`/`http` are the effective addresses (the config's, or `aios runtime serve`'s overrides).
 * The build calls it too, so an image that would not start is not built.
 */
export function exposureProblems(rt: RuntimeConfig['runtime'], o: { listen?: string; http?: string } = {}): { errors: string[]; warnings: string[] } {
  const errors: string[] = [];
  const warnings: string[] = [];
  const listen = o.listen ?? rt.listen;
  const http = o.http ?? rt.http_listen;
  const set = TLS_KEYS.filter((k) => rt[k] !== '');
  if (set.length && set.length < TLS_KEYS.length) {
    errors.push(`runtime.tls_cert, runtime.tls_key and runtime.tls_client_ca go together (mutual TLS): set all three or none (missing: ${TLS_KEYS.filter((k) => rt[k] === '').map((k) => `runtime.${k}`).join(', ')})`);
  }
  const grpcTls = set.length === TLS_KEYS.length;
  if (listen && !isLoopbackHost(hostOf(listen)) && !grpcTls) {
    if (rt.insecure_listen) warnings.push(`gRPC on ${listen} without TLS (runtime.insecure_listen = true): anyone who can reach it has admin access`);
    else errors.push(`runtime.listen = "${listen}" is not loopback and has no TLS: set runtime.tls_cert, runtime.tls_key and runtime.tls_client_ca (mutual TLS), or runtime.insecure_listen = true to accept unauthenticated connections`);
  }
  if (http) {
    const haveCert = !!(rt.tls_cert && rt.tls_key);
    if (isLoopbackHost(hostOf(http))) {
      if (httpTls(rt, http) && !haveCert) errors.push(`the HTTP API on ${http} uses TLS (runtime.http_tls = "${rt.http_tls}"), which needs runtime.tls_cert and runtime.tls_key`);
    } else {
      const missing = [
        ...(rt.http_keys ? [] : ['runtime.http_keys (API keys)']),
        ...(rt.http_tls === 'off' ? ['runtime.http_tls = "auto" or "on" (TLS)'] : haveCert ? [] : ['runtime.tls_cert + runtime.tls_key (TLS)']),
      ];
      const without = [...(rt.http_keys ? [] : ['API keys']), ...(rt.http_tls !== 'off' && haveCert ? [] : ['TLS'])].join(' and ');
      if (missing.length && rt.insecure_listen) warnings.push(`HTTP API on ${http} without ${without} (runtime.insecure_listen = true): anyone who can reach it can use it`);
      else if (missing.length) errors.push(`runtime.http_listen = "${http}" is not loopback: set ${missing.join(' and ')}, or runtime.insecure_listen = true to accept unauthenticated requests`);
    }
  }
  if (rt.metrics_auth === 'metrics' && !rt.http_keys) errors.push('runtime.metrics_auth = "metrics" needs runtime.http_keys (the keys /metrics checks)');
  return { errors, warnings };
}
