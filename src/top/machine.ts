/**
 * The machine figures of `aios top`, read from this host's /proc and /sys: CPU use per core (from
 * two samples of /proc/stat), load, memory total/available, zram. They describe the machine the
 * runtime runs on only when it runs here (unix socket or loopback address); for a remote runtime
 * the panel leaves them out. Parsers are pure (text in, numbers out); `sampleMachine` does the reads.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

/** Cumulative jiffies of one CPU: busy and total. */
export interface CpuTimes {
  busy: number;
  total: number;
}

export interface Zram {
  device: string;
  /** Uncompressed data stored, bytes. */
  origBytes: number;
  /** Memory it takes (compressed data + overhead), bytes. */
  usedBytes: number;
  /** Its disk size, bytes. */
  diskBytes: number;
}

export interface MachineSample {
  /** Per core (cpu0, cpu1, …), cumulative. */
  cpus: CpuTimes[];
  load: [number, number, number];
  memTotalBytes: number;
  memAvailableBytes: number;
  zram: Zram[];
}

/** What the screen shows: busy fraction per core since the previous sample (null on the first). */
export interface Machine {
  cpuBusy: (number | null)[];
  load: [number, number, number];
  memTotalBytes: number;
  memAvailableBytes: number;
  zram: Zram[];
}

/** The per-core lines of /proc/stat (`cpu0 user nice system idle iowait irq softirq steal …`). */
export function parseProcStat(text: string): CpuTimes[] {
  const out: CpuTimes[] = [];
  for (const line of text.split('\n')) {
    const m = /^cpu(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const f = m[2]!.trim().split(/\s+/).map(Number);
    // user nice system idle iowait irq softirq steal (guest and guest_nice are inside user/nice)
    const total = f.slice(0, 8).reduce((a, b) => a + (b || 0), 0);
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    out[Number(m[1])] = { busy: total - idle, total };
  }
  return out.filter(Boolean);
}

/** A kernel CPU list ("0-3,6", as in Cpus_allowed_list or cpuset.cpus) as CPU numbers; [] for "" or anything else. */
export function parseCpuList(text: string): number[] {
  const out = new Set<number>();
  for (const part of text.trim().split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) return [];
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (b < a || b - a > 4096) return [];
    for (let i = a; i <= b; i++) out.add(i);
  }
  return [...out].sort((x, y) => x - y);
}

export function parseLoadavg(text: string): [number, number, number] {
  const [a, b, c] = text.trim().split(/\s+/).map(Number);
  return [a ?? 0, b ?? 0, c ?? 0];
}

/** MemTotal and MemAvailable of /proc/meminfo, in bytes. */
export function parseMeminfo(text: string): { totalBytes: number; availableBytes: number } {
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0) * 1024;
  return { totalBytes: kb('MemTotal'), availableBytes: kb('MemAvailable') };
}

/** /sys/block/zramN/mm_stat: orig_data_size compr_data_size mem_used_total … */
export function parseMmStat(text: string): { origBytes: number; usedBytes: number } {
  const f = text.trim().split(/\s+/).map(Number);
  return { origBytes: f[0] ?? 0, usedBytes: f[2] ?? 0 };
}

/** Busy fraction per core between two samples; null where there is no earlier sample. */
export function cpuBusy(prev: CpuTimes[] | undefined, cur: CpuTimes[]): (number | null)[] {
  return cur.map((c, i) => {
    const p = prev?.[i];
    if (!p) return null;
    const dt = c.total - p.total;
    return dt > 0 ? Math.min(1, Math.max(0, (c.busy - p.busy) / dt)) : 0;
  });
}

const read = (f: string) => {
  try {
    return readFileSync(f, 'utf8');
  } catch {
    return '';
  }
};

/** One sample of this host (files that cannot be read give zeros, not errors). */
export function sampleMachine(root = '/'): MachineSample {
  const mem = parseMeminfo(read(join(root, 'proc/meminfo')));
  let zdevs: string[] = [];
  try {
    zdevs = readdirSync(join(root, 'sys/block')).filter((d) => /^zram\d+$/.test(d));
  } catch {
    /* no /sys/block */
  }
  const zram = zdevs
    .map((d) => ({ device: d, ...parseMmStat(read(join(root, 'sys/block', d, 'mm_stat'))), diskBytes: Number(read(join(root, 'sys/block', d, 'disksize')).trim() || 0) }))
    .filter((z) => z.diskBytes > 0);
  return { cpus: parseProcStat(read(join(root, 'proc/stat'))), load: parseLoadavg(read(join(root, 'proc/loadavg')) || '0 0 0'), memTotalBytes: mem.totalBytes, memAvailableBytes: mem.availableBytes, zram };
}

/** The screen's figures from this sample and the previous one. */
export function machineView(prev: MachineSample | undefined, cur: MachineSample): Machine {
  return { cpuBusy: cpuBusy(prev?.cpus, cur.cpus), load: cur.load, memTotalBytes: cur.memTotalBytes, memAvailableBytes: cur.memAvailableBytes, zram: cur.zram };
}
