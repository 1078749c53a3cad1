/**
 * The model children's seccomp filter (seccomp.ts): its system call numbers against the kernel's
 * headers on this host, and what the program decides for the calls it names (run by the same
 * classic-BPF semantics the kernel uses, runFilter()). That it loads and holds in a real child is
 * tested by test/e2e/runtime-sandbox.test.ts and the image's boot check.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { ACTION, DENIED, MODE_ARG, NOT_IMPLEMENTED, SYSCALLS, childFilterProgram, childSeccompFilter, runFilter } from '../../src/runtime/seccomp.js';

/** `#define __NR_name 123` (and asm-generic's __NR3264_name) from a header. */
function headerNumbers(file: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const x of readFileSync(file, 'utf8').matchAll(/^#define __NR(?:3264)?_(\w+)\s+(\d+)\s*$/gm)) m.set(x[1]!, Number(x[2]));
  return m;
}

const HEADERS = { x64: '/usr/include/x86_64-linux-gnu/asm/unistd_64.h', arm64: '/usr/include/asm-generic/unistd.h' } as const;
// Newer than the headers of Debian 12 (Linux 6.1): checked against the kernel's tables by hand.
const NEWER = new Set(['fchmodat2', 'open_tree_attr']);

describe('system call numbers', () => {
  for (const arch of ['x64', 'arm64'] as const) {
    it.runIf(existsSync(HEADERS[arch]))(`${arch}: every number matches ${HEADERS[arch]}`, () => {
      const h = headerNumbers(HEADERS[arch]);
      const wrong: string[] = [];
      for (const [name, nr] of Object.entries(SYSCALLS[arch])) {
        if (!h.has(name)) {
          if (!NEWER.has(name)) wrong.push(`${name}: not in the header`);
          continue;
        }
        if (h.get(name) !== nr) wrong.push(`${name}: ${nr}, the header says ${h.get(name)}`);
      }
      expect(wrong).toEqual([]);
    });
  }
  it('names every call of the lists in the x86-64 table', () => {
    for (const s of [...DENIED, ...NOT_IMPLEMENTED, ...Object.keys(MODE_ARG), 'connect', 'socket', 'socketpair', 'clone', 'ioctl']) expect(SYSCALLS.x64[s], s).toBeTypeOf('number');
  });
});

describe('what the filter decides', () => {
  const arch = ACTION.AUDIT_ARCH.x64!;
  const nr = SYSCALLS.x64;
  const prog = childFilterProgram('x64')!;
  const run = (name: string, args: number[] = [], p = prog) => runFilter(p, { nr: nr[name]!, arch, args });
  const EPERM = ACTION.errno(ACTION.EPERM);

  it('allows what an inference server does', () => {
    for (const name of ['openat', 'mkdirat', 'fchmod', 'ioctl', 'clone']) expect([name, run(name)]).toEqual([name, ACTION.allow]);
    expect(runFilter(prog, { nr: 0, arch })).toBe(ACTION.allow); // read
    expect(runFilter(prog, { nr: 9, arch })).toBe(ACTION.allow); // mmap
    expect(run('socket', [1])).toBe(ACTION.allow); // AF_UNIX
    expect(run('clone', [0x003d0f00])).toBe(ACTION.allow); // pthread_create's flags
    expect(run('openat', [-100, 0, 0o102, 0o600])).toBe(ACTION.allow);
    expect(run('fchmod', [3, 0o755])).toBe(ACTION.allow);
    expect(run('ioctl', [2, 0x5401])).toBe(ACTION.allow); // TCGETS
  });

  it('refuses mounts, namespaces, privileged and debugging calls with EPERM', () => {
    for (const name of ['mount', 'umount2', 'pivot_root', 'unshare', 'setns', 'ptrace', 'bpf', 'keyctl', 'io_uring_setup', 'setuid', 'init_module', 'reboot', 'perf_event_open', 'userfaultfd']) {
      expect([name, run(name)]).toEqual([name, EPERM]);
    }
    expect(run('clone', [0x10000000 | 17])).toBe(EPERM); // CLONE_NEWUSER | SIGCHLD
    expect(run('clone', [0x40000000 | 17])).toBe(EPERM); // CLONE_NEWNET
  });

  it('has no network: only AF_UNIX sockets, no connect(); a split model (network) may do both', () => {
    expect(run('socket', [2])).toBe(ACTION.errno(ACTION.EAFNOSUPPORT)); // AF_INET
    expect(run('socket', [10])).toBe(ACTION.errno(ACTION.EAFNOSUPPORT)); // AF_INET6
    expect(run('socket', [16])).toBe(ACTION.errno(ACTION.EAFNOSUPPORT)); // AF_NETLINK
    expect(run('socketpair', [2])).toBe(ACTION.errno(ACTION.EAFNOSUPPORT));
    expect(run('connect', [3])).toBe(EPERM);
    const net = childFilterProgram('x64', { network: true })!;
    expect(run('socket', [2], net)).toBe(ACTION.allow);
    expect(run('connect', [3], net)).toBe(ACTION.allow);
    expect(run('mount', [], net)).toBe(EPERM);
  });

  it('refuses set-user/group-ID bits (RestrictSUIDSGID= for the child) and the calls whose mode it cannot see', () => {
    expect(run('chmod', [0, 0o4755])).toBe(EPERM);
    expect(run('fchmod', [3, 0o2755])).toBe(EPERM);
    expect(run('fchmodat', [-100, 0, 0o4700])).toBe(EPERM);
    expect(run('openat', [-100, 0, 0o100, 0o4755])).toBe(EPERM);
    expect(run('mkdir', [0, 0o2775])).toBe(EPERM);
    expect(run('creat', [0, 0o6755])).toBe(EPERM);
    for (const name of ['clone3', 'openat2', 'fchmodat2']) expect([name, run(name)]).toEqual([name, ACTION.errno(ACTION.ENOSYS)]);
  });

  it('refuses TIOCSTI and TIOCLINUX', () => {
    expect(run('ioctl', [0, 0x5412])).toBe(EPERM);
    expect(run('ioctl', [0, 0x541c])).toBe(EPERM);
  });

  it('kills another architecture and x32 calls', () => {
    expect(runFilter(prog, { nr: 0, arch: 0x40000003 })).toBe(ACTION.kill); // i386
    expect(runFilter(prog, { nr: 0x40000000 + 0, arch })).toBe(ACTION.kill);
  });

  it('is the same program, 8 bytes per instruction, little-endian, for arm64 too; none for other architectures', () => {
    const b = childSeccompFilter('x64')!;
    expect(b.length).toBe(prog.length * 8);
    expect(b.readUInt16LE(0)).toBe(0x20); // ld [4]: the architecture
    expect(b.readUInt32LE(4)).toBe(4);
    expect(b.readUInt32LE(b.length - 4)).toBe(ACTION.allow);
    const arm = childFilterProgram('arm64')!;
    expect(runFilter(arm, { nr: SYSCALLS.arm64.mount!, arch: ACTION.AUDIT_ARCH.arm64! })).toBe(EPERM);
    expect(runFilter(arm, { nr: SYSCALLS.arm64.socket!, arch: ACTION.AUDIT_ARCH.arm64!, args: [1] })).toBe(ACTION.allow);
    expect(runFilter(arm, { nr: 63, arch: ACTION.AUDIT_ARCH.arm64! })).toBe(ACTION.allow); // read
    expect(childSeccompFilter('ia32')).toBeUndefined();
  });
});
