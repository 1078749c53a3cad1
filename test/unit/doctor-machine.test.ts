/**
 * The running machine's `aios doctor` (src/doctor/machine.ts): every check's ok and failure paths
 * through a faked probe, the real probe on this host against a runtime that is not there, and the
 * JSON lines the image's boot check passes to qemu-test (parsed by parseCheckLog, printed by
 * doctorLines).
 */
import { describe, expect, it } from 'vitest';
import { gzipSync } from 'node:zlib';
import { machineChecks, machineProbe, parseKernelConfig, kernelFacts, WISHES_FILE, type MachineProbe, type RuntimeView } from '../../src/doctor/machine.js';
import { runChecks } from '../../src/doctor/run.js';
import { machineDoctor } from '../../src/cli/machine.js';
import { parseCheckLog } from '../../src/qemu/index.js';
import { doctorLines } from '../../src/cli/qemu.js';

const GiB = 2 ** 30;
const healthy: RuntimeView = {
  ready: true,
  version: '0.1.0',
  budgetBytes: 4 * GiB,
  usedBytes: GiB,
  models: [{ name: 'aios-tiny', state: 'ready', actualBytes: GiB, estimateBytes: GiB, error: '', restarts: 0 }],
};
const WISHES = [
  { symbol: 'TRANSPARENT_HUGEPAGE_MADVISE', value: 'y', fragment: 'inference.config', line: 1, reason: '' },
  { symbol: 'HZ_300', value: 'y', fragment: 'inference.config', line: 2, reason: '' },
];
const CONFIG = 'CONFIG_HZ_250=y\n# CONFIG_HZ_300 is not set\nCONFIG_HZ=250\nCONFIG_TRANSPARENT_HUGEPAGE=y\nCONFIG_TRANSPARENT_HUGEPAGE_MADVISE=y\nCONFIG_LOCALVERSION=""\n';

/** A machine where everything is as it should be, with overrides. */
function fake(o: { files?: Record<string, string | undefined>; run?: Record<string, { code: number; stdout: string }>; space?: { free: number; total: number }; runtime?: RuntimeView | { error: string } } = {}): MachineProbe {
  const files: Record<string, string | undefined> = {
    '/proc/sys/kernel/osrelease': '6.12.57+deb13-amd64\n',
    '/boot/config-6.12.57+deb13-amd64': CONFIG,
    '/sys/kernel/mm/transparent_hugepage/enabled': 'always [madvise] never\n',
    '/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor': 'performance\n',
    '/sys/devices/system/cpu/cpu1/cpufreq/scaling_governor': 'performance\n',
    '/proc/swaps': 'Filename\tType\tSize\tUsed\tPriority\n/dev/zram0                              partition\t2097148\t0\t100\n',
    '/proc/cmdline': 'root=PARTUUID=x rw transparent_hugepage=madvise\n',
    [WISHES_FILE]: JSON.stringify(WISHES),
    ...o.files,
  };
  const run: Record<string, { code: number; stdout: string }> = {
    'systemctl is-active aios-runtime.service': { code: 0, stdout: 'active\n' },
    'journalctl -u aios-runtime.service -b -o short-iso --no-pager -g llama-server died': { code: 1, stdout: '' },
    'timedatectl show -p NTPSynchronized --value': { code: 0, stdout: 'yes\n' },
    'systemctl list-units --failed --plain --no-legend --no-pager': { code: 0, stdout: '' },
    ...o.run,
  };
  return {
    read: async (p) => files[p],
    readGz: async () => undefined,
    list: async (d) => (d === '/sys/devices/system/cpu' ? ['cpu0', 'cpu1', 'cpufreq', 'online'] : d === '/sys/devices/system/node' ? ['node0', 'possible'] : []),
    run: async (argv) => run[argv.join(' ')] ?? { code: 127, stdout: '' },
    space: async () => o.space ?? { free: 20 * GiB, total: 30 * GiB },
    runtime: async () => o.runtime ?? healthy,
  };
}

const byId = async (p: MachineProbe) => {
  const r = await runChecks(machineChecks(p), 'machine', 'test', 'this machine can serve models', 'this machine cannot serve models');
  return { r, f: Object.fromEntries(r.findings.map((x) => [x.id, x])) };
};

describe('aios doctor on a running machine', () => {
  it('a healthy machine: every check ok but the wish the stock kernel cannot honour', async () => {
    const { r, f } = await byId(fake());
    expect(r.findings.map((x) => x.id)).toEqual(['runtime.service', 'runtime.answers', 'models.failed', 'models.crashes', 'memory.budget', 'kernel.wishes', 'cpu.governor', 'memory.thp', 'memory.zram', 'time.sync', 'space.state', 'gpu.driver', 'units.failed']);
    for (const id of ['runtime.service', 'runtime.answers', 'models.failed', 'models.crashes', 'memory.budget', 'cpu.governor', 'memory.thp', 'memory.zram', 'time.sync', 'space.state', 'gpu.driver', 'units.failed']) expect(f[id]!.status, id).toBe('ok');
    expect(f['runtime.answers']!.detail).toBe('ready, version 0.1.0; models ready: aios-tiny');
    expect(f['memory.budget']!.detail).toBe('1.0 GiB of 4.0 GiB (aios-tiny 1.0 GiB)');
    expect(f['memory.zram']!.detail).toBe('/dev/zram0 2.0 GiB');
    expect(f['kernel.wishes']).toMatchObject({ status: 'warning', detail: expect.stringMatching(/^not live: CONFIG_HZ_300=y \(/) });
    expect(f['kernel.wishes']!.fix).toMatch(/aios kernel check/);
    expect(r.verdict).toMatchObject({ ok: true, problems: 0, warnings: 1, text: 'this machine can serve models (1 warning)' });
  });

  it('a runtime that is down: problems with the command that shows why, exit 1', async () => {
    const p = fake({ run: { 'systemctl is-active aios-runtime.service': { code: 3, stdout: 'failed\n' } }, runtime: { error: 'connect ENOENT /run/aios/runtime.sock' } });
    const { r, f } = await byId(p);
    expect(f['runtime.service']).toMatchObject({ status: 'problem', detail: 'failed', fix: expect.stringMatching(/journalctl -u aios-runtime/) });
    expect(f['runtime.answers']).toMatchObject({ status: 'problem', detail: 'no answer on its socket: connect ENOENT /run/aios/runtime.sock' });
    expect(f['models.failed']!.status).toBe('warning');
    expect(r.verdict.ok).toBe(false);
    expect(r.verdict.text).toBe('this machine cannot serve models: 2 problems, 3 warnings');
    const lines: string[] = [];
    expect(await machineDoctor(p, {}, (s) => void lines.push(s))).toBe(1);
    expect(lines.join('')).toMatch(/^aios doctor: this machine, \S+\nproblem  aios-runtime service {2,}failed\n {2,}fix: journalctl/);
  });

  it('a failed model, crashes in the journal, over budget', async () => {
    const journal = [
      '2026-12-02T10:00:01+00:00 aios aios-runtime[412]: aios-tiny: llama-server died (SIGKILL): ggml_abort',
      '2026-12-02T10:05:09+00:00 aios aios-runtime[412]: aios-tiny: llama-server died (out of memory: limit 300 MiB): ',
      '2026-12-02T10:06:00+00:00 aios aios-runtime[412]: big: llama-server died (exit 1): error loading model',
    ].join('\n');
    const view: RuntimeView = { ...healthy, usedBytes: 5 * GiB, models: [...healthy.models, { name: 'big', state: 'failed', actualBytes: 0, estimateBytes: 4 * GiB, error: 'crashed 4 times in 5 minutes; last: exit 1', restarts: 3 }] };
    const { f } = await byId(fake({ runtime: view, run: { 'journalctl -u aios-runtime.service -b -o short-iso --no-pager -g llama-server died': { code: 0, stdout: journal } } }));
    expect(f['models.failed']).toMatchObject({ status: 'problem', detail: 'failed: big (crashed 4 times in 5 minutes; last: exit 1)', fix: 'aios runtime load big tries again; journalctl -u aios-runtime -b shows its output' });
    expect(f['models.crashes']!.status).toBe('warning');
    expect(f['models.crashes']!.detail).toBe('crashed in this boot: aios-tiny (last: out of memory: limit 300 MiB at 2026-12-02T10:05:09+00:00); big (last: exit 1 at 2026-12-02T10:06:00+00:00)');
    expect(f['memory.budget']).toMatchObject({ status: 'warning', detail: expect.stringMatching(/^5\.0 GiB used of a 4\.0 GiB budget \(aios-tiny 1\.0 GiB, big 4\.0 GiB\): over budget$/) });
  });

  it('governor, THP, zram, clock, space and failed units: each failure named with its fix', async () => {
    const { f } = await byId(
      fake({
        files: {
          '/sys/devices/system/cpu/cpu1/cpufreq/scaling_governor': 'powersave\n',
          '/sys/kernel/mm/transparent_hugepage/enabled': 'always madvise [never]\n',
          '/proc/swaps': 'Filename\tType\tSize\tUsed\tPriority\n',
        },
        run: {
          'timedatectl show -p NTPSynchronized --value': { code: 0, stdout: 'no\n' },
          'systemctl list-units --failed --plain --no-legend --no-pager': { code: 0, stdout: 'systemd-timesyncd.service loaded failed failed Network Time Synchronization\n' },
        },
        space: { free: 50 * 2 ** 20, total: 4 * GiB },
      }),
    );
    expect(f['cpu.governor']).toMatchObject({ status: 'warning', detail: 'performance on 1 CPU, powersave on 1 CPU: not performance everywhere (generation speed follows the clock)' });
    expect(f['memory.thp']).toMatchObject({ status: 'warning', fix: 'echo madvise > /sys/kernel/mm/transparent_hugepage/enabled' });
    expect(f['memory.zram']).toMatchObject({ status: 'warning', detail: 'no zram swap active' });
    expect(f['time.sync']).toMatchObject({ status: 'warning', fix: expect.stringMatching(/timesyncd/) });
    expect(f['space.state']).toMatchObject({ status: 'problem', detail: '50.0 MiB free of 4.0 GiB (models, sessions, the spend ledger)' });
    expect(f['units.failed']).toMatchObject({ status: 'warning', detail: 'systemd-timesyncd.service', fix: 'journalctl -u systemd-timesyncd.service -b says why' });
    // A VM without cpufreq, and an image without recorded wishes: nothing to fix.
    const vm = await byId(fake({ files: { '/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor': undefined, '/sys/devices/system/cpu/cpu1/cpufreq/scaling_governor': undefined, [WISHES_FILE]: undefined } }));
    expect(vm.f['cpu.governor']).toMatchObject({ status: 'ok', detail: expect.stringMatching(/^no cpufreq here/) });
    expect(vm.f['kernel.wishes']).toMatchObject({ status: 'ok', detail: expect.stringMatching(/^none recorded/) });
  });

  it('reads the running config from /proc/config.gz before /boot', async () => {
    expect(parseKernelConfig(CONFIG)).toEqual({ HZ_250: 'y', HZ_300: 'n', HZ: '250', TRANSPARENT_HUGEPAGE: 'y', TRANSPARENT_HUGEPAGE_MADVISE: 'y', LOCALVERSION: '' });
    const gz = gzipSync(Buffer.from('CONFIG_HZ_300=y\nCONFIG_HZ=300\n')).toString('latin1');
    const p = { ...fake(), readGz: async (path: string) => (path === '/proc/config.gz' ? (await import('node:zlib')).gunzipSync(Buffer.from(gz, 'latin1')).toString() : undefined) };
    const k = await kernelFacts(p);
    expect(k).toMatchObject({ configSource: '/proc/config.gz', kernel: '6.12.57+deb13-amd64', numaNodes: 1, governor: 'performance' });
    expect(k.config.HZ_300).toBe('y');
    const { f } = await byId(p);
    expect(f['kernel.wishes']).toMatchObject({ status: 'ok', detail: '2 of 2 live in 6.12.57+deb13-amd64' });
  });

  it('the real probe on this host, with no runtime listening: a verdict, not a crash', async () => {
    const lines: string[] = [];
    const code = await machineDoctor(machineProbe('unix:/nonexistent/aios-test.sock'), { json: true }, (s) => void lines.push(s));
    const r = JSON.parse(lines.join('')) as { target: string; verdict: { ok: boolean }; findings: { id: string; status: string; detail: string }[] };
    expect(code).toBe(1);
    expect(r.target).toBe('machine');
    const answers = r.findings.find((x) => x.id === 'runtime.answers')!;
    expect(answers.status).toBe('problem');
    expect(answers.detail).toMatch(/^no answer on its socket: .*\/nonexistent\/aios-test\.sock/);
    // Readings of this host are real: THP and space are known here.
    expect(r.findings.find((x) => x.id === 'memory.thp')!.detail).not.toMatch(/not readable/);
    expect(r.findings.find((x) => x.id === 'space.state')!.detail).toMatch(/free of/);
  }, 30_000);

  it('its JSON lines reach qemu-test through the boot check, and are printed with the verdict', async () => {
    const lines: string[] = [];
    await machineDoctor(fake(), { jsonLines: true }, (s) => void lines.push(s));
    const out = lines.join('').trimEnd().split('\n');
    expect(out).toHaveLength(14);
    // As the console shows them: journald's prefix, \r\n, and one line a kernel message broke.
    const log = ['AIOS-CHECK-BEGIN', 'AIOS-CHECK state=running', ...out.map((l) => `[  81.2] boot-check[500]: AIOS-CHECK-DOCTOR ${l}`), '[  81.3] boot-check[500]: AIOS-CHECK-DOCTOR {"finding":{"id":"x",[  81.3] random: crng', 'AIOS-CHECK-END'].join('\r\n');
    const { guest } = parseCheckLog(log);
    expect(guest.doctor!.findings).toHaveLength(13);
    expect(guest.doctor!.unparsed).toBe(1);
    expect(guest.doctor!.verdict).toMatchObject({ ok: true, warnings: 1 });
    expect(doctorLines(guest.doctor!)).toEqual([
      'aios doctor (in the guest): ok: this machine can serve models (1 warning)',
      expect.stringMatching(/^ {2}warning {2}kernel wishes: not live: CONFIG_HZ_300=y/),
      '  (1 line(s) of its output did not parse)',
    ]);
    expect(doctorLines({ findings: [], unparsed: 0 })).toEqual(['aios doctor (in the guest): no verdict (the doctor did not finish)']);
  });
});
