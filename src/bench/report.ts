/** The human-readable (Markdown) report of one `aios bench` run. */
import { formatSize } from '../util/size.js';
import type { BenchResult, Figure } from './index.js';

/** A number with about four significant digits, no exponent for the magnitudes seen here. */
export function fmt(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  return x.toFixed(a >= 1000 ? 0 : a >= 100 ? 1 : a >= 10 ? 2 : a >= 1 ? 3 : 4);
}

const pct = (x: number) => `${(x * 100).toFixed(1)} %`;

function row(f: Figure, extra = ''): string {
  return `| ${f.name} (${f.unit}) | ${f.n} | ${fmt(f.mean)} | ${fmt(f.sd)} | ${pct(f.cv)} | ${fmt(f.ci[0])} – ${fmt(f.ci[1])} | ${fmt(f.min)} – ${fmt(f.max)} | ${extra} |`;
}

/** How an image's run came about: booted by `aios bench --image` (and how), or read from a saved log. */
export function imageLine(r: BenchResult): string {
  const i = r.image!;
  const runtime = i.runtime ? `; aios-runtime ${i.runtime} during the run` : '';
  if (i.via === 'log') return `its own entry point ${i.entry} on the machine, output read from ${i.log ?? 'a saved log'}${runtime}`;
  const what = i.accel === 'kvm'
    ? 'KVM: a real measurement of the image\'s kernel and user space, in a virtual machine on this host'
    : 'TCG: EMULATED, the figures are meaningless for performance (a functional check only)';
  return `\`${i.file}\`${i.name ? ` ("${i.name}"${i.sha256 ? `, sha256 ${i.sha256.slice(0, 16)}…` : ''})` : ''} booted by aios bench --image in QEMU with ${what}; ${i.cpus} vCPUs (-cpu ${i.cpu}), ${i.memoryMiB} MiB; added to the kernel command line: \`${i.cmdlineExtra}\`; ran ${i.entry}${runtime}; ${i.hostSeconds} s from QEMU start to power-off${i.retried ? ` (${i.retried})` : ''}`;
}

export function formatReport(r: BenchResult): string {
  const f = r.facts;
  const lines: string[] = [];
  if (f.virtualization.emulated) lines.push(`> **EMULATED CPU (QEMU TCG): these figures are meaningless for performance.** They only show that the benchmark runs.`, '');
  lines.push(`## aios bench${r.image ? ` of the image ${r.image.name ?? r.image.file ?? ''}`.trimEnd() : ''}, ${r.when}`, '');
  lines.push('| figure | n | mean | sd | CV | 95 % CI of the mean | min – max | note |', '| --- | --- | --- | --- | --- | --- | --- | --- |');
  if (r.figures.pp) lines.push(row(r.figures.pp));
  if (r.figures.tg) lines.push(row(r.figures.tg, r.roofline ? `roofline ${pct(r.roofline.fraction)}` : ''));
  lines.push(row(r.figures.bandwidth, `best ${fmt(r.figures.bandwidth.best)}`));
  lines.push('');
  if (r.roofline) {
    const rf = r.roofline;
    lines.push(`Roofline: tg ${fmt(rf.tgMean)} t/s × ${formatSize(rf.bytesPerToken)} read per token = ${fmt((rf.tgMean * rf.bytesPerToken) / 1e9)} GB/s = **${pct(rf.fraction)}** of the measured bandwidth (best triad ${fmt(rf.bandwidthBest)} GB/s); over tg's 95 % CI ${pct(rf.fractionCi[0])} – ${pct(rf.fractionCi[1])}.`, '');
  }
  const m = r.model;
  lines.push(`- model: \`${m.file}\`${m.synthesized ? ` (synthesized ${m.synthesized}, random weights)` : ''}: ${m.architecture}${m.name ? ` "${m.name}"` : ''}, ${(m.parameters / 1e6).toFixed(1)} M parameters, ${m.fileType ?? '?'}, weights ${formatSize(m.weightsBytes)}; read per token ${formatSize(m.bytesPerToken)} (${m.bytesPerTokenNote})`);
  lines.push(`- runs: ${r.settings.reps} timed repetitions per test, ${r.settings.threads} threads${r.settings.gpuLayers ? `, ${r.settings.gpuLayers} layers on the GPU` : ''}; ${r.settings.warmup}; ${r.seconds.toFixed(0)} s in all`);
  if (f.gpus?.length) lines.push(`- GPU: ${f.gpus.join('; ')} (nvidia-smi: name, driver, memory)`);
  lines.push(`- CPU: ${f.cpu.model} (${f.cpu.vendor}), ${f.cpu.logical} logical CPUs, ${f.cpu.physicalCores} physical cores, ${f.cpu.sockets} socket(s), ${f.numaNodes} NUMA node(s); ${formatSize(f.memoryBytes)} RAM${f.llcBytes ? `; last-level cache ${formatSize(f.llcBytes)} (as reported)` : ''}`);
  lines.push(`- where: ${f.virtualization.summary}`);
  if (r.image) lines.push(`- image: ${imageLine(r)}`);
  const version = (f.llama.version ?? 'version unknown').replace(/^version:\s*/, '');
  const commit = f.llama.buildCommit && !version.includes(f.llama.buildCommit) ? ` (commit ${f.llama.buildCommit})` : '';
  lines.push(`- llama.cpp: ${version}${commit}, built for ${f.llama.isa ?? 'an unknown ISA level (no llama.json beside the binaries)'}; backend ${f.llama.backends ?? '?'}; ${f.llama.binDir}`);
  lines.push(`- kernel: ${f.kernel.release} (${f.kernel.version}); CONFIG_HZ ${f.configHz} (from ${f.configSource}); preemption ${f.preemption.mode} (from ${f.preemption.source})`);
  lines.push(`- cmdline: \`${f.kernel.cmdline}\``);
  lines.push(`- THP: enabled ${f.thp.enabled}, defrag ${f.thp.defrag}; governor: ${f.governor}; zram: ${f.zram.summary}`);
  lines.push(`- mitigations: ${f.mitigations.summary}`);
  lines.push(`- bandwidth probe: ${r.figures.bandwidth.sizing}; 3 arrays × 8 bytes per element counted per repetition (STREAM)`);
  lines.push(`- load average: ${r.loadAverage.before.map((x) => x.toFixed(2)).join(' ')} before, ${r.loadAverage.after.map((x) => x.toFixed(2)).join(' ')} after`);
  for (const w of r.warnings) lines.push(`- warning: ${w}`);
  return lines.join('\n') + '\n';
}
