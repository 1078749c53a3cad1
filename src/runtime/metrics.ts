/**
 * Prometheus metrics (text format 0.0.4) for GET /metrics: the runtime's own `aios_*` families,
 * kept from the service's events and read from snapshots at scrape time, and each child's
 * `llamacpp:*` metrics re-exported with a `model` label. A scrape reads state only: it loads
 * nothing and does not count as use (idle models still unload). Imports nothing from the build side.
 */
import { getChild } from './upstream.js';
import { PRIORITIES } from './events.js';
import type { RuntimeService } from './service.js';

type Labels = Record<string, string>;
type Kind = 'counter' | 'gauge' | 'histogram' | 'untyped' | 'summary';

interface Family {
  help: string;
  type: Kind;
  /** Sample lines, already formatted (name{labels} value). */
  lines: string[];
}

const esc = (v: string) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
const escHelp = (v: string) => v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
const fmtLabels = (l: Labels) => {
  const parts = Object.entries(l).map(([k, v]) => `${k}="${esc(v)}"`);
  return parts.length ? `{${parts.join(',')}}` : '';
};
const fmtNum = (n: number) => (n === Infinity ? '+Inf' : n === -Infinity ? '-Inf' : Number.isNaN(n) ? 'NaN' : String(n));

/** A labelled counter or gauge kept in memory. */
class Series {
  private values = new Map<string, { labels: Labels; value: number }>();
  constructor(
    readonly name: string,
    readonly type: 'counter' | 'gauge',
    readonly help: string,
  ) {}
  inc(labels: Labels, by = 1): void {
    const k = JSON.stringify(labels);
    const v = this.values.get(k);
    if (v) v.value += by;
    else this.values.set(k, { labels, value: by });
  }
  set(labels: Labels, value: number): void {
    this.values.set(JSON.stringify(labels), { labels, value });
  }
  lines(): string[] {
    return [...this.values.values()].map((v) => `${this.name}${fmtLabels(v.labels)} ${fmtNum(v.value)}`);
  }
}

class Histogram {
  private values = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly buckets: number[],
  ) {}
  observe(labels: Labels, v: number): void {
    const k = JSON.stringify(labels);
    let h = this.values.get(k);
    if (!h) this.values.set(k, (h = { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 }));
    this.buckets.forEach((b, i) => {
      if (v <= b) h!.counts[i]!++;
    });
    h.sum += v;
    h.count++;
  }
  lines(): string[] {
    const out: string[] = [];
    for (const h of this.values.values()) {
      this.buckets.forEach((b, i) => out.push(`${this.name}_bucket${fmtLabels({ ...h.labels, le: String(b) })} ${h.counts[i]}`));
      out.push(`${this.name}_bucket${fmtLabels({ ...h.labels, le: '+Inf' })} ${h.count}`);
      out.push(`${this.name}_sum${fmtLabels(h.labels)} ${fmtNum(h.sum)}`);
      out.push(`${this.name}_count${fmtLabels(h.labels)} ${h.count}`);
    }
    return out;
  }
}

/** Splits a child's exposition into families (HELP/TYPE kept) and adds model="…" to every sample. */
export function relabel(text: string, model: string, into: Map<string, Family>): void {
  let current = '';
  const fam = (name: string) => {
    let f = into.get(name);
    if (!f) into.set(name, (f = { help: '', type: 'untyped', lines: [] }));
    return f;
  };
  const label = `model="${esc(model)}"`;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    const meta = /^#\s+(HELP|TYPE)\s+(\S+)\s*(.*)$/.exec(line);
    if (meta) {
      const f = fam(meta[2]!);
      current = meta[2]!;
      if (meta[1] === 'HELP') f.help ||= meta[3]!;
      else f.type = (['counter', 'gauge', 'histogram', 'summary'].includes(meta[3]!) ? meta[3] : 'untyped') as Kind;
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(.*)$/.exec(line);
    if (!m) continue;
    const [, name, labels, rest] = m;
    const family = current && (name === current || name!.startsWith(current + '_')) ? current : name!;
    const inner = labels ? labels.slice(1, -1).trim() : '';
    fam(family).lines.push(`${name}{${inner ? `${label},${inner}` : label}} ${rest}`);
  }
}

const TTFT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const SECONDS_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const TPS_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000];

export class Metrics {
  private requests = new Series('aios_requests_total', 'counter', 'Requests that entered the queue, by how they ended (ok, rejected, cancelled, expired, error)');
  private queueWait = new Histogram('aios_request_queue_seconds', 'Time a request waited for a slot (queue and model load)', SECONDS_BUCKETS);
  private loads = new Series('aios_model_loads_total', 'counter', 'Model loads, by result (ok or error)');
  private loadSeconds = new Histogram('aios_model_load_seconds', 'Time from starting llama-server to the model answering /health', SECONDS_BUCKETS);
  private unloads = new Series('aios_model_unloads_total', 'counter', 'Models that left memory, by reason (idle, evict, request, shutdown, reload)');
  private oomKills = new Series('aios_model_oom_kills_total', 'counter', 'Model children the kernel killed for exceeding their cgroup\'s memory.max (budgeted footprint + runtime.child_memory_margin)');
  private evictions = new Series('aios_model_evictions_total', 'counter', 'Models unloaded to make room for another (memory budget)');
  private lastLoad = new Map<string, { estimateBytes: number; actualBytes: number }>();
  private ttft = new Histogram('aios_time_to_first_token_seconds', 'From sending the request to llama-server to the first generated token', TTFT_BUCKETS);
  private genSeconds = new Histogram('aios_generation_seconds', 'From sending the request to llama-server to its last token', SECONDS_BUCKETS);
  private tps = new Histogram('aios_tokens_per_second', 'Decode rate of one generation (tokens after the first / time after the first)', TPS_BUCKETS);
  private tokens = new Series('aios_completion_tokens_total', 'counter', 'Generated tokens');
  private downloads = new Series('aios_model_downloads_total', 'counter', 'Catalog models downloaded (auto-install)');
  private downloadBytes = new Series('aios_model_download_bytes', 'gauge', 'Bytes of the current or last download of a model');
  private authFailures = new Series('aios_auth_failures_total', 'counter', 'Refused authentications and calls outside their scope, by listener (grpc, http) and reason');

  private cloudRequests = new Series('aios_cloud_requests_total', 'counter', 'Strategic-layer cloud calls, by provider ([api.<name>]), model and how they ended (ok, error, cancelled)');
  private cloudTokens = new Series('aios_cloud_tokens_total', 'counter', 'Tokens of cloud calls by provider and kind (input, output, cache_read, cache_write, reasoning)');
  private cloudLatency = new Histogram('aios_cloud_latency_seconds', 'From sending a cloud call to its last token', SECONDS_BUCKETS);

  constructor(private svc: RuntimeService) {
    const ev = svc.events;
    ev.on('cloud', (c) => {
      this.cloudRequests.inc({ provider: c.provider, model: c.model, status: c.status });
      const kinds = { input: c.tokens.input, output: c.tokens.output, cache_read: c.tokens.cacheRead, cache_write: c.tokens.cacheWrite, reasoning: c.tokens.reasoning };
      for (const [kind, n] of Object.entries(kinds)) this.cloudTokens.inc({ provider: c.provider, kind }, n);
      if (c.status === 'ok') this.cloudLatency.observe({ provider: c.provider }, c.latencyMs / 1000);
    });
    ev.on('request', (r) => {
      this.requests.inc({ model: r.model, priority: r.priority, status: r.status });
      if (r.status === 'ok' || r.queuedMs > 0) this.queueWait.observe({ model: r.model, priority: r.priority }, r.queuedMs / 1000);
    });
    ev.on('load', (l) => {
      this.loads.inc({ model: l.model, result: l.ok ? 'ok' : 'error' });
      if (l.ok) {
        this.loadSeconds.observe({ model: l.model }, l.ms / 1000);
        this.lastLoad.set(l.model, { estimateBytes: l.estimateBytes, actualBytes: l.actualBytes });
      }
    });
    ev.on('oom', (o) => this.oomKills.inc({ model: o.model }));
    ev.on('unload', (u) => {
      this.unloads.inc({ model: u.model, reason: u.reason });
      if (u.reason === 'evict') this.evictions.inc({ model: u.model });
    });
    ev.on('generation', (g) => {
      const m = { model: g.model };
      this.ttft.observe(m, g.ttftMs / 1000);
      this.genSeconds.observe(m, g.genMs / 1000);
      this.tokens.inc(m, g.completionTokens);
      const decodeMs = g.genMs - g.ttftMs;
      const rate = g.completionTokens > 1 && decodeMs > 0 ? ((g.completionTokens - 1) * 1000) / decodeMs : g.genMs > 0 ? (g.completionTokens * 1000) / g.genMs : 0;
      if (rate > 0) this.tps.observe(m, rate);
    });
    ev.on('authFailure', (a) => this.authFailures.inc({ listener: a.listener, reason: a.reason }));
    ev.on('download', (d) => {
      this.downloadBytes.set({ model: d.model }, d.bytes);
      if (d.done) this.downloads.inc({ model: d.model });
    });
  }

  /** The whole exposition; children's metrics are fetched now (2 s at most each, in parallel). */
  async render(): Promise<string> {
    const fams = new Map<string, Family>();
    const add = (s: { name: string; help: string; lines(): string[] }, type: Kind) => fams.set(s.name, { help: s.help, type, lines: s.lines() });
    const models = this.svc.models();

    const ready = new Series('aios_runtime_ready', 'gauge', '1 once the operational model answered its probe');
    ready.set({}, this.svc.ready ? 1 : 0);
    add(ready, 'gauge');
    const uptime = new Series('aios_runtime_uptime_seconds', 'gauge', 'Seconds since aios-runtime started');
    uptime.set({}, Math.round((Date.now() - this.svc.startedAt) / 1000));
    add(uptime, 'gauge');

    // Queue depth per model and priority: the scheduler's snapshot when it has one, else zeros.
    const depth = new Series('aios_queue_depth', 'gauge', 'Requests waiting for a slot, by model and priority');
    const known = new Set<string>(models.map((m) => m.name));
    for (const { profile } of this.svc.router.configured()) known.add(profile.name);
    for (const name of known) for (const pr of Object.keys(PRIORITIES)) depth.set({ model: name, priority: pr }, 0);
    for (const q of this.svc.queueSnapshot()) depth.set({ model: q.model, priority: q.priority }, q.depth);
    add(depth, 'gauge');

    add(this.requests, 'counter');
    add(this.queueWait, 'histogram');

    const state = new Series('aios_model_state', 'gauge', '1 for the state each known model is in (starting, ready, restarting, stopping, failed)');
    const inflight = new Series('aios_model_inflight', 'gauge', 'Requests being answered by the model now');
    const estimate = new Series('aios_model_estimated_bytes', 'gauge', 'Memory the model was expected to take when it was loaded');
    const actual = new Series('aios_model_actual_bytes', 'gauge', 'Memory the model takes (measured: resident set of its llama-server)');
    const restarts = new Series('aios_model_restarts', 'gauge', 'Times the model\'s llama-server was restarted after a crash or hang');
    const vramEstimate = new Series('aios_model_vram_estimated_bytes', 'gauge', 'GPU memory the model was expected to take (0 without offload)');
    const vramActual = new Series('aios_model_vram_actual_bytes', 'gauge', 'GPU memory llama-server reported for the model (0 without offload)');
    const cgCurrent = new Series('aios_model_cgroup_memory_bytes', 'gauge', 'memory.current of the model\'s cgroup (anonymous memory + page cache of the weights it faulted in)');
    const cgPeak = new Series('aios_model_cgroup_memory_peak_bytes', 'gauge', 'memory.peak of the model\'s cgroup');
    const cgLimit = new Series('aios_model_memory_limit_bytes', 'gauge', 'memory.max of the model\'s cgroup');
    for (const m of models) {
      if (m.memoryLimitBytes || m.cgroupMemoryBytes) {
        cgCurrent.set({ model: m.name }, m.cgroupMemoryBytes);
        cgPeak.set({ model: m.name }, m.cgroupPeakBytes);
        cgLimit.set({ model: m.name }, m.memoryLimitBytes);
      }
    }
    for (const m of models) {
      const l = { model: m.name };
      state.set({ ...l, state: m.state }, 1);
      restarts.set(l, m.restarts);
      inflight.set(l, m.inflight);
      const est = m.estimateBytes || this.lastLoad.get(m.name)?.estimateBytes;
      if (est) estimate.set(l, est);
      const act = m.actualBytes || m.memoryBytes || this.lastLoad.get(m.name)?.actualBytes;
      if (act) actual.set(l, act);
      vramEstimate.set(l, m.vramEstimateBytes);
      vramActual.set(l, m.vramActualBytes);
    }
    for (const s of [state, inflight, estimate, actual, vramEstimate, vramActual, restarts, cgCurrent, cgPeak, cgLimit]) add(s, 'gauge');
    add(this.oomKills, 'counter');
    add(this.loads, 'counter');
    add(this.loadSeconds, 'histogram');
    add(this.unloads, 'counter');
    add(this.evictions, 'counter');
    add(this.downloads, 'counter');
    add(this.downloadBytes, 'gauge');
    add(this.ttft, 'histogram');
    add(this.genSeconds, 'histogram');
    add(this.tps, 'histogram');
    add(this.tokens, 'counter');
    add(this.authFailures, 'counter');

    // The strategic layer: spend (this month, from the ledger's totals) against each budget.
    if (this.svc.cloud.enabled) {
      const spend = new Series('aios_cloud_spend_usd', 'gauge', 'USD spent this calendar month (UTC) per provider: settled calls plus open reservations');
      const budget = new Series('aios_cloud_budget_usd', 'gauge', 'Monthly budget per provider (api.<name>.monthly_budget_usd)');
      for (const p of this.svc.cloud.view()) {
        spend.set({ provider: p.name }, p.spentUsd);
        budget.set({ provider: p.name }, p.budgetUsd);
      }
      add(this.cloudRequests, 'counter');
      add(this.cloudTokens, 'counter');
      add(spend, 'gauge');
      add(budget, 'gauge');
      add(this.cloudLatency, 'histogram');
    }

    // Children: /metrics of each ready llama-server (it does not touch the idle clock).
    const up = new Series('aios_child_metrics_up', 'gauge', '1 if the model\'s llama-server answered /metrics in this scrape');
    const children = new Map<string, Family>();
    await Promise.all(
      models
        .filter((m) => m.state === 'ready' && (m.socket || m.port > 0))
        .map(async (m) => {
          try {
            // Its unix socket when sandboxed, else its loopback port.
            const r = await getChild(m.socket || m.port, '/metrics', 2000);
            if (r.status !== 200) throw new Error(String(r.status));
            return { name: m.name, text: r.body };
          } catch {
            return { name: m.name, text: undefined };
          }
        }),
    ).then((rs) => {
      for (const r of rs) {
        up.set({ model: r.name }, r.text === undefined ? 0 : 1);
        if (r.text !== undefined) relabel(r.text, r.name, children);
      }
    });
    add(up, 'gauge');
    for (const [name, f] of children) if (!fams.has(name)) fams.set(name, f);

    let out = '';
    for (const [name, f] of fams) {
      out += `# HELP ${name} ${escHelp(f.help)}\n# TYPE ${name} ${f.type}\n`;
      for (const l of f.lines) out += l + '\n';
    }
    return out;
  }
}
