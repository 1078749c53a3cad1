/**
 * The model sandbox's pure parts (issue 16): memory limits, CPU lists and "auto" spreading, the
 * cgroup files' formats, the sandbox tools' command lines, the settings read from a config, and the
 * readiness message sent from the main PID through notify-exec. The real cgroups and the real
 * sandbox are tested in test/e2e/runtime-sandbox.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { transformSync } from 'esbuild';
import { join } from 'node:path';
import {
  ModelCgroups,
  cgroupName,
  childMemoryLimit,
  foreignProcesses,
  formatCpuList,
  oomKillsIn,
  oomMessage,
  parseCpuList,
  parseKeyValues,
  parseMemoryValue,
  physicalCoreSets,
  spreadCpus,
  v2PathOf,
} from '../../src/runtime/cgroup.js';
import { bwrapArgs, probeSandbox, sandboxLaunch } from '../../src/runtime/sandbox.js';
import { Isolation, isolationSettings } from '../../src/runtime/isolation.js';
import { slotDirOf } from '../../src/runtime/defaults.js';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { REPO, tmp } from '../helpers.js';

const MiB = 1024 * 1024;

describe('memory limits', () => {
  it('memory.max = footprint × (1 + margin), rounded up to a MiB; no footprint = no limit', () => {
    expect(childMemoryLimit(100 * MiB, 0.1)).toBe(110 * MiB);
    expect(childMemoryLimit(100 * MiB + 1, 0)).toBe(101 * MiB);
    expect(childMemoryLimit(1000 * MiB, 0.25)).toBe(1250 * MiB);
    expect(childMemoryLimit(0, 0.1)).toBe(0);
    expect(childMemoryLimit(100 * MiB, -1)).toBe(100 * MiB); // a negative margin never shrinks it
  });
  it('says "out of memory: limit N MiB"', () => {
    expect(oomMessage(134 * MiB)).toBe('out of memory: limit 134 MiB');
    expect(oomMessage(0)).toBe('out of memory');
  });
});

describe('CPU lists and "auto" spreading', () => {
  it('parses and formats cpuset lists', () => {
    expect(parseCpuList('0-3,6,8-9')).toEqual([0, 1, 2, 3, 6, 8, 9]);
    expect(parseCpuList('')).toEqual([]);
    expect(formatCpuList([9, 8, 0, 1, 2, 3, 6])).toBe('0-3,6,8-9');
    expect(formatCpuList([5])).toBe('5');
    expect(() => parseCpuList('0-x')).toThrow(/not a CPU list/);
    expect(() => parseCpuList('3-1')).toThrow(/backwards/);
  });
  // 4 physical cores with two hyperthreads each (CPU n and n+4 share a core).
  const ht4 = [[0, 4], [1, 5], [2, 6], [3, 7]];
  it('gives each model its own physical cores (all their hyperthreads), in order, without overlap', () => {
    const r = spreadCpus(ht4, [{ name: 'op', threads: 1 }, { name: 'tac', threads: 3 }]);
    expect(r.why).toBeUndefined();
    expect(Object.fromEntries(r.cpus)).toEqual({ op: '0,4', tac: '1-3,5-7' });
  });
  it('threads = 0: an equal share of what the others leave', () => {
    expect(Object.fromEntries(spreadCpus(ht4, [{ name: 'a', threads: 0 }, { name: 'b', threads: 0 }]).cpus)).toEqual({ a: '0-1,4-5', b: '2-3,6-7' });
    expect(Object.fromEntries(spreadCpus(ht4, [{ name: 'a', threads: 1 }, { name: 'b', threads: 0 }]).cpus)).toEqual({ a: '0,4', b: '1-3,5-7' });
  });
  it('does not pin when the machine has too few cores for every model (and says why)', () => {
    const two = [[0], [1]];
    const r = spreadCpus(two, [{ name: 'a', threads: 2 }, { name: 'b', threads: 1 }]);
    expect(r.cpus.size).toBe(0);
    expect(r.why).toMatch(/want a: 2, b: 1 of 2 physical core\(s\): not pinned/);
    expect(spreadCpus([[0]], [{ name: 'a', threads: 0 }, { name: 'b', threads: 0 }]).why).toMatch(/< 1 core/);
  });
  it('reads the physical cores from sysfs topology', () => {
    const sys = tmp('aios-sysfs-');
    writeFileSync(join(sys, 'online'), '0-3\n');
    for (const [cpu, core] of [[0, 0], [1, 1], [2, 0], [3, 1]]) {
      mkdirSync(join(sys, `cpu${cpu}/topology`), { recursive: true });
      writeFileSync(join(sys, `cpu${cpu}/topology/physical_package_id`), '0\n');
      writeFileSync(join(sys, `cpu${cpu}/topology/core_id`), `${core}\n`);
    }
    expect(physicalCoreSets(sys)).toEqual([[0, 2], [1, 3]]);
    expect(physicalCoreSets(join(sys, 'none'))).toEqual([]);
  });
});

describe('cgroup files', () => {
  it('reads OOM kills from memory.events (v2) and memory.oom_control (v1)', () => {
    const events = 'low 0\nhigh 12\nmax 340\noom 3\noom_kill 2\noom_group_kill 1\n';
    expect(parseKeyValues(events)).toMatchObject({ high: 12, max: 340, oom: 3, oom_kill: 2 });
    expect(oomKillsIn(events)).toBe(2);
    expect(oomKillsIn('oom_kill_disable 0\nunder_oom 0\noom_kill 4\n')).toBe(4);
    expect(oomKillsIn('')).toBe(0);
  });
  it('reads memory values ("max" and v1\'s "no limit" are 0)', () => {
    expect(parseMemoryValue('140509184\n')).toBe(140509184);
    expect(parseMemoryValue('max\n')).toBe(0);
    expect(parseMemoryValue('9223372036854771712\n')).toBe(0);
  });
  it('finds the daemon\'s cgroup v2 path and names model cgroups safely', () => {
    expect(v2PathOf('0::/system.slice/aios-runtime.service\n')).toBe('/system.slice/aios-runtime.service');
    expect(v2PathOf('4:memory:/x\n1:name=systemd:/\n')).toBeUndefined();
    expect(cgroupName('tiny')).toBe('model-tiny');
    expect(cgroupName('../../etc')).toBe('model-__.._etc');
    expect(cgroupName('a/b c')).toBe('model-a_b_c');
  });
  it('"auto" takes only a cgroup whose processes are all the daemon\'s own (delegated), never a shared one', () => {
    const dir = tmp('aios-cg-');
    const child = spawn('/bin/sleep', ['5']);
    writeFileSync(join(dir, 'cgroup.procs'), `${process.pid}\n${child.pid}\n`);
    expect(foreignProcesses(dir)).toEqual([]);
    writeFileSync(join(dir, 'cgroup.procs'), `${process.pid}\n1\n${process.ppid}\n`);
    expect(foreignProcesses(dir)).toEqual([1, process.ppid]);
    child.kill();
  });
  it('"off" makes no cgroups; a directory that is not a cgroup is one warning, never an error', () => {
    const warnings: string[] = [];
    expect(ModelCgroups.open('off', (w) => warnings.push(w))).toBeUndefined();
    expect(warnings).toEqual([]);
    expect(ModelCgroups.open(tmp('not-a-cgroup-'), (w) => warnings.push(w))).toBeUndefined();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/no per-model cgroups: .* is not a cgroup directory/);
  });
});

describe('the sandbox', () => {
  const spec = { model: '/m/x.gguf', dir: '/run/aios/models/model-x', readOnly: ['/m/lora.gguf'], readWrite: ['/var/lib/aios-runtime/sessions/slots/model-x'] };
  it('unshare + setpriv: user, network and PID namespaces, Landlock (read /usr, the model; write its two directories), no_new_privs, its seccomp filter; dies with the daemon', () => {
    const seccomp = { noNet: '/c/seccomp-nonet.bpf', net: '/c/seccomp-net.bpf' };
    const l = sandboxLaunch({ kind: 'landlock', unshare: '/usr/bin/unshare', setpriv: '/usr/bin/setpriv', seccomp }, spec);
    const a = l.argv;
    expect(a.slice(0, 4)).toEqual(['/usr/bin/setpriv', '--pdeathsig', 'KILL', '--']);
    const u = a.indexOf('/usr/bin/unshare');
    expect(a.slice(u, a.indexOf('--', u) + 1)).toEqual(['/usr/bin/unshare', '--user', '--map-current-user', '--net', '--pid', '--fork', '--kill-child', '--']);
    const rules = a.flatMap((v, i) => (v === '--landlock-rule' ? [a[i + 1]] : []));
    expect(rules).toEqual(expect.arrayContaining([
      'path-beneath:read-file,read-dir,execute:/usr',
      'path-beneath:read-file:/m/x.gguf',
      'path-beneath:read-file,execute:/m/lora.gguf',
      expect.stringMatching(/^path-beneath:read-file,read-dir,write-file,.*:\/run\/aios\/models\/model-x$/),
      expect.stringMatching(/^path-beneath:read-file,read-dir,write-file,.*:\/var\/lib\/aios-runtime\/sessions\/slots\/model-x$/),
    ]));
    // Nothing else is writable, and nothing under /etc, /var, /run, /home, /tmp or /proc is readable but the loader cache.
    expect(rules.filter((r) => r!.includes('write-file')).map((r) => r!.split(':').pop())).toEqual(expect.arrayContaining(['/run/aios/models/model-x', '/var/lib/aios-runtime/sessions/slots/model-x']));
    expect(rules.filter((r) => r!.includes('write-file')).map((r) => r!.split(':').pop()).filter((p) => !p!.startsWith('/run/aios/models/model-x') && !p!.startsWith('/var/lib/aios-runtime/sessions/slots/model-x') && p !== '/dev/null')).toEqual([]);
    expect(rules.map((r) => r!.split(':').pop()).filter((p) => /^\/(etc|var|run|home|tmp|proc)\//.test(p!) && p !== '/etc/ld.so.cache' && !p!.includes('model-x'))).toEqual([]);
    expect(a.slice(a.indexOf('--seccomp-filter'), a.indexOf('--seccomp-filter') + 2)).toEqual(['--seccomp-filter', '/c/seccomp-nonet.bpf']);
    expect(a).toContain('--no-new-privs');
    expect(a.at(-1)).toBe('--');
    expect(l).toMatchObject({ env: { PATH: '/usr/bin', HOME: spec.dir, TMPDIR: spec.dir }, fds: [], stopSignal: 'SIGKILL' });
    // A split model keeps the network, and gets the filter that allows it.
    const n = sandboxLaunch({ kind: 'landlock', unshare: '/usr/bin/unshare', setpriv: '/usr/bin/setpriv', seccomp }, { ...spec, shareNet: true }).argv;
    expect(n).not.toContain('--net');
    expect(n[n.indexOf('--seccomp-filter') + 1]).toBe('/c/seccomp-net.bpf');
  });
  it('bubblewrap: no network, read-only root, the model read-only, its own directory and its slot directory writable; the filter on fd 3', () => {
    const l = sandboxLaunch({ kind: 'bwrap', bwrap: '/usr/bin/bwrap', freshProc: true, seccomp: { noNet: '/c/n.bpf', net: '/c/y.bpf' } }, spec);
    const a = l.argv;
    const pairs = (flag: string) => a.flatMap((v, i) => (v === flag ? [a[i + 1]] : []));
    expect(a[0]).toBe('/usr/bin/bwrap');
    for (const f of ['--unshare-net', '--unshare-user', '--unshare-pid', '--die-with-parent', '--new-session', '--clearenv']) expect(a).toContain(f);
    expect(a.slice(a.indexOf('--cap-drop'), a.indexOf('--cap-drop') + 2)).toEqual(['--cap-drop', 'ALL']);
    expect(pairs('--ro-bind')).toEqual(expect.arrayContaining(['/usr', '/m/x.gguf', '/m/lora.gguf']));
    expect(pairs('--bind')).toEqual(['/run/aios/models/model-x', '/var/lib/aios-runtime/sessions/slots/model-x']);
    expect(pairs('--remount-ro')).toEqual(['/']);
    expect(pairs('--seccomp')).toEqual(['3']);
    expect(l.fds).toEqual(['/c/n.bpf']);
    expect(l.stopSignal).toBe('SIGTERM');
    expect(a.at(-1)).toBe('--');
    expect(pairs('--proc')).toEqual(['/proc']);
    // Where no procfs can be mounted: the daemon's /proc, read-only, and still a PID namespace of its own.
    const b = bwrapArgs({ kind: 'bwrap', bwrap: '/usr/bin/bwrap', freshProc: false }, { model: '/m/x.gguf', dir: '/d' });
    expect(b).toContain('--unshare-pid');
    expect(b).not.toContain('--proc');
    expect(b).not.toContain('--seccomp');
    expect(b.join(' ')).toContain('--ro-bind /proc /proc');
  });
  it('"off": no sandbox, one warning that says so; neither tool working: one warning naming both', () => {
    expect(probeSandbox('off', '/tmp')).toEqual({ warnings: [expect.stringMatching(/model sandbox off/)] });
    const r = probeSandbox('auto', tmp('probe-'), { tools: { bwrap: '/nonexistent/bwrap', unshare: '/nonexistent/unshare', setpriv: '/nonexistent/setpriv' } });
    expect(r.mode).toBeUndefined();
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings[0]).toMatch(/^no model sandbox \(unshare \+ setpriv: .*; bwrap: .*\): children can open network connections/);
  });
  it('with neither cgroups nor sandbox, llama-server\'s command line is unchanged', () => {
    const iso = new Isolation({ sandbox: 'off', cgroup: 'off', childDir: tmp('children-'), swapMax: 0, layers: new Map() });
    const p = { name: 'm', path: '/m.gguf', level: '' as const, ctxSize: 512, threads: 0, gpuLayers: 0, parallel: 1, mmap: true };
    expect(iso.wrap(p, '/usr/bin/llama-server', ['-m', '/m.gguf', '--host', '127.0.0.1'])).toEqual({ argv: ['/usr/bin/llama-server', '-m', '/m.gguf', '--host', '127.0.0.1'] });
    expect(iso.warnings).toEqual([expect.stringMatching(/model sandbox off/)]);
    expect(iso.describe()).toBe('model isolation: no per-model cgroups; no sandbox');
  });
  it('each model saves its sessions in a slot directory of its own (its --slot-save-path)', () => {
    expect(slotDirOf('/var/lib/aios-runtime/sessions', 'tiny')).toBe('/var/lib/aios-runtime/sessions/slots/model-tiny');
    expect(slotDirOf('/s', '../x')).toBe('/s/slots/model-__x'); // never a path outside
  });
});

describe('settings from the config', () => {
  it('reads the keys with the schema\'s defaults, and spreads "auto" layers over the cores', () => {
    const c = RuntimeConfigSchema.parse({ models: { operational: { name: 'op.gguf', threads: 1 }, tactical: { name: 'tac.gguf', threads: 2, cpu_weight: 50 } } });
    expect(c.runtime).toMatchObject({ sandbox: 'auto', cgroup: 'auto', child_memory_margin: 0.1, child_swap_max: '0', child_dir: '' });
    const s = isolationSettings(c.runtime, c.models, () => {}, () => [[0], [1], [2], [3]]);
    expect(s).toMatchObject({ sandbox: 'auto', cgroup: 'auto', swapMax: 0 });
    expect(Object.fromEntries(s.layers)).toEqual({ op: { cpus: '0', cpuWeight: 100 }, tac: { cpus: '1-2', cpuWeight: 50 } });
    // A fixed list is kept; too few cores for the auto ones: not pinned, one warning.
    const warnings: string[] = [];
    const c2 = RuntimeConfigSchema.parse({ runtime: { child_swap_max: '64M', sandbox: 'off' }, models: { operational: { name: 'op.gguf', cpus: '0-1' }, tactical: { name: 'tac.gguf' } } });
    const s2 = isolationSettings(c2.runtime, c2.models, (w) => warnings.push(w), () => [[0], [1], [2]]);
    expect(s2).toMatchObject({ sandbox: 'off', swapMax: 64 * MiB });
    // the auto layer gets the core the fixed list leaves
    expect(Object.fromEntries(s2.layers)).toEqual({ op: { cpus: '0-1', cpuWeight: 100 }, tac: { cpus: '2', cpuWeight: 100 } });
    expect(warnings).toEqual([]);
    const s3 = isolationSettings({}, { operational: { name: 'a.gguf' }, tactical: { name: 'b.gguf' } }, (w) => warnings.push(w), () => [[0]]);
    expect(s3.layers.get('a')!.cpus).toBe('');
    expect(warnings).toHaveLength(1);
    expect(() => RuntimeConfigSchema.parse({ models: { operational: { name: 'x.gguf', cpus: 'all' } } })).toThrow(/CPU list/);
  });
});

describe('readiness from the main PID (notify-exec)', () => {
  it('the daemon writes READY=1 on the socket notify-exec connected, so systemd sees the main PID as the sender', async () => {
    const dir = tmp('aios-notify-');
    const sock = join(dir, 'notify');
    // systemd's side: a datagram socket with SO_PASSCRED, printing the sender's PID and the message.
    const listener = spawn('/usr/bin/python3', ['-c', `
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1])
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1); print("listening", flush=True)
msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
pid = [struct.unpack("iii", d)[0] for l, t, d in anc if t == socket.SCM_CREDENTIALS][0]
print(pid, msg.decode().replace("\\n", " "), flush=True)`, sock]);
    let out = '';
    listener.stdout.on('data', (d: Buffer) => (out += d.toString()));
    await new Promise<void>((r) => listener.stdout.once('data', () => r()));
    // src/runtime/notify.ts as the daemon runs it (compiled to plain JS here with esbuild, as the image's bundle is).
    const js = transformSync(readFileSync(join(REPO, 'src/runtime/notify.ts'), 'utf8'), { loader: 'ts', format: 'esm' }).code;
    writeFileSync(join(dir, 'notify.mjs'), js);
    const main = `import('${join(dir, 'notify.mjs')}').then((m) => m.notifyReady()).then(() => console.log('pid', process.pid))`;
    const daemon = spawn(join(REPO, 'rootfs/usr/libexec/aios/notify-exec'), [process.execPath, '-e', main], { env: { ...process.env, NOTIFY_SOCKET: sock } });
    let dout = '';
    let derr = '';
    daemon.stdout.on('data', (d: Buffer) => (dout += d.toString()));
    daemon.stderr.on('data', (d: Buffer) => (derr += d.toString()));
    const code = await new Promise<number | null>((r) => daemon.once('exit', r));
    await new Promise<void>((r) => (listener.exitCode !== null ? r() : listener.once('exit', () => r())));
    expect(code, derr).toBe(0);
    const pid = /pid (\d+)/.exec(dout)?.[1];
    expect(pid).toBeDefined();
    expect(out).toContain(`${pid} READY=1 STATUS=serving`);
  }, 30_000);
});

describe('aios ps', () => {
  it('shows each model\'s cgroup memory, peak, limit and OOM kills, and the out-of-memory reason, when models have cgroups', async () => {
    const { psTable } = await import('../../src/cli/runtime.js');
    const base = { level: 'tactical', pid: 1, port: 0, memory_bytes: 50 * MiB, last_used_unix_ms: 0, uptime_ms: 1, path: '/m', restarts: 1, estimate_bytes: 122 * MiB, actual_bytes: 60 * MiB, estimate_error_pct: 1, pinned: false, idle_until_unix_ms: 0, inflight: 0, queued: 0, queued_by_priority: {}, reported_bytes: 0, parallel: 1, tokens_per_second: 0, ttft_p50_ms: 0 };
    const models = [
      { ...base, name: 'hog', state: 'ready', error: 'out of memory: limit 134 MiB', cgroup_memory_bytes: 48 * MiB, cgroup_peak_bytes: 134 * MiB, memory_limit_bytes: 134 * MiB, oom_kills: 1, socket: '/run/aios/models/model-hog/llama.sock' },
      { ...base, name: 'steady', state: 'ready', error: '', cgroup_memory_bytes: 47 * MiB, cgroup_peak_bytes: 49 * MiB, memory_limit_bytes: 134 * MiB, oom_kills: 0, socket: '' },
    ];
    const out = psTable(models as never, { memory_budget_bytes: 0, memory_used_bytes: 0, queued: 0 } as never).split('\n');
    expect(out[0]).toMatch(/^NAME\s+STATE\s+ESTIMATE\s+ACTUAL\s+RSS\s+ERROR\s+SLOTS\s+QUEUE\s+IDLE UNTIL\s+CGROUP\s+PEAK\s+LIMIT\s+OOM$/);
    expect(out.find((l) => l.startsWith('hog '))).toMatch(/48\.0 MiB\s+134\.0 MiB\s+134\.0 MiB\s+1$/);
    expect(out).toContain('hog: out of memory: limit 134 MiB');
    // Without cgroups the table keeps its columns.
    const plain = psTable(models.map((m) => ({ ...m, cgroup_memory_bytes: 0, memory_limit_bytes: 0 })) as never, { memory_budget_bytes: 0, memory_used_bytes: 0, queued: 0 } as never).split('\n');
    expect(plain[0]).toMatch(/IDLE UNTIL$/);
  });
});
