/**
 * The seccomp filter of a model child (issue 16, docs/sandbox.md): a classic-BPF program that
 * the sandbox tool installs right before llama-server starts (setpriv --seccomp-filter, bwrap
 * --seccomp), after no_new_privs. It is a deny list in the spirit of systemd's groups, for what an
 * inference server never needs and what a compromised one would use to get out or to hurt the rest
 * of the machine:
 *
 * - mounts and namespaces (@mount, unshare, setns, clone with CLONE_NEW*, clone3 → ENOSYS so that
 *   glibc falls back to clone, whose flags can be checked);
 * - privileged and kernel-facing calls (@privileged, @module, @raw-io, @reboot, @swap, @clock,
 *   @debug, @cpu-emulation, @obsolete, @keyring, bpf, perf_event_open, userfaultfd, io_uring,
 *   fanotify, open_by_handle_at);
 * - any socket but AF_UNIX (EAFNOSUPPORT), and connect(): llama-server only listens on its unix
 *   socket and accepts; it never connects anywhere (not to the daemon's socket, another model's, or
 *   the journal's, which the same user could otherwise reach);
 * - set-user/group-ID bits on files (what systemd's RestrictSUIDSGID= does: chmod/mkdir/mknod/open
 *   with S_ISUID or S_ISGID → EPERM, openat2 and fchmodat2, whose mode cannot be checked, → ENOSYS);
 * - the terminal injection ioctls TIOCSTI and TIOCLINUX.
 *
 * Everything else is allowed (the unit's own SystemCallFilter= stays in force below this one: in
 * aios-runtime.service a child gets both). Other architectures than the one it was made for are
 * killed, as are x32 calls on x86-64.
 *
 * Why generated here: the daemon is Node.js (no libseccomp binding) and the image has no C compiler;
 * the program is small, fixed, and its syscall numbers are checked against the kernel's headers by
 * test/unit/runtime-seccomp.test.ts. The tools that load it (util-linux's setpriv, bubblewrap) are
 * Debian's.
 */

const AUDIT_ARCH: Record<string, number> = { x64: 0xc000003e, arm64: 0xc00000b7 };
const EPERM = 1;
const ENOSYS = 38;
const EAFNOSUPPORT = 97;
const AF_UNIX = 1;
const S_ISUID_ISGID = 0o6000;
/** CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET (CLONE_NEWTIME is only for unshare/clone3, and clone's low byte is the exit signal). */
const CLONE_NEW_MASK = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000;
const TIOCSTI = 0x5412;
const TIOCLINUX = 0x541c;

/** System call numbers the filter names, per architecture (x86-64: asm/unistd_64.h; arm64: asm-generic/unistd.h). */
export const SYSCALLS: Record<'x64' | 'arm64', Record<string, number>> = {
  x64: {
    mount: 165, umount2: 166, pivot_root: 155, chroot: 161, fsopen: 430, fsconfig: 431, fsmount: 432, fspick: 433, move_mount: 429, open_tree: 428, mount_setattr: 442, open_tree_attr: 467,
    unshare: 272, setns: 308, clone: 56, clone3: 435,
    acct: 163, bpf: 321, quotactl: 179, quotactl_fd: 443, setdomainname: 171, sethostname: 170, vhangup: 153, reboot: 169, kexec_load: 246, kexec_file_load: 320, swapon: 167, swapoff: 168,
    init_module: 175, finit_module: 313, delete_module: 176, iopl: 172, ioperm: 173, settimeofday: 164, clock_settime: 227, clock_adjtime: 305, adjtimex: 159, syslog: 103,
    perf_event_open: 298, ptrace: 101, process_vm_readv: 310, process_vm_writev: 311, kcmp: 312, pidfd_getfd: 438, lookup_dcookie: 212, open_by_handle_at: 304, name_to_handle_at: 303,
    fanotify_init: 300, fanotify_mark: 301, userfaultfd: 323, add_key: 248, request_key: 249, keyctl: 250, io_uring_setup: 425, io_uring_enter: 426, io_uring_register: 427,
    modify_ldt: 154, uselib: 134, ustat: 136, sysfs: 139, _sysctl: 156, nfsservctl: 180, create_module: 174, get_kernel_syms: 177, query_module: 178, afs_syscall: 183, tuxcall: 184, security: 185, vserver: 236, getpmsg: 181, putpmsg: 182,
    setuid: 105, setgid: 106, setreuid: 113, setregid: 114, setresuid: 117, setresgid: 119, setgroups: 116, setfsuid: 122, setfsgid: 123, capset: 126,
    connect: 42, socket: 41, socketpair: 53,
    chmod: 90, fchmod: 91, fchmodat: 268, fchmodat2: 452, mkdir: 83, mkdirat: 258, mknod: 133, mknodat: 259, open: 2, openat: 257, creat: 85, openat2: 437,
    ioctl: 16,
  },
  arm64: {
    mount: 40, umount2: 39, pivot_root: 41, chroot: 51, fsopen: 430, fsconfig: 431, fsmount: 432, fspick: 433, move_mount: 429, open_tree: 428, mount_setattr: 442, open_tree_attr: 467,
    unshare: 97, setns: 268, clone: 220, clone3: 435,
    acct: 89, bpf: 280, quotactl: 60, quotactl_fd: 443, setdomainname: 162, sethostname: 161, vhangup: 58, reboot: 142, kexec_load: 104, kexec_file_load: 294, swapon: 224, swapoff: 225,
    init_module: 105, finit_module: 273, delete_module: 106, settimeofday: 170, clock_settime: 112, clock_adjtime: 266, adjtimex: 171, syslog: 116,
    perf_event_open: 241, ptrace: 117, process_vm_readv: 270, process_vm_writev: 271, kcmp: 272, pidfd_getfd: 438, lookup_dcookie: 18, open_by_handle_at: 265, name_to_handle_at: 264,
    fanotify_init: 262, fanotify_mark: 263, userfaultfd: 282, add_key: 217, request_key: 218, keyctl: 219, io_uring_setup: 425, io_uring_enter: 426, io_uring_register: 427, nfsservctl: 42,
    setuid: 146, setgid: 144, setreuid: 145, setregid: 143, setresuid: 147, setresgid: 149, setgroups: 159, setfsuid: 151, setfsgid: 152, capset: 91,
    connect: 203, socket: 198, socketpair: 199,
    fchmod: 52, fchmodat: 53, fchmodat2: 452, mkdirat: 34, mknodat: 33, openat: 56, openat2: 437,
    ioctl: 29,
  },
};

/** Denied outright with EPERM (the ones an architecture lacks are skipped). */
export const DENIED = [
  // @mount
  'mount', 'umount2', 'pivot_root', 'chroot', 'fsopen', 'fsconfig', 'fsmount', 'fspick', 'move_mount', 'open_tree', 'mount_setattr', 'open_tree_attr',
  // namespaces
  'unshare', 'setns',
  // @privileged, @module, @raw-io, @reboot, @swap, @clock
  'acct', 'bpf', 'quotactl', 'quotactl_fd', 'setdomainname', 'sethostname', 'vhangup', 'reboot', 'kexec_load', 'kexec_file_load', 'swapon', 'swapoff',
  'init_module', 'finit_module', 'delete_module', 'iopl', 'ioperm', 'settimeofday', 'clock_settime', 'clock_adjtime', 'adjtimex', 'syslog',
  'setuid', 'setgid', 'setreuid', 'setregid', 'setresuid', 'setresgid', 'setgroups', 'setfsuid', 'setfsgid',
  // @debug and friends
  'perf_event_open', 'ptrace', 'process_vm_readv', 'process_vm_writev', 'kcmp', 'pidfd_getfd', 'lookup_dcookie', 'open_by_handle_at', 'name_to_handle_at',
  'fanotify_init', 'fanotify_mark', 'userfaultfd', 'io_uring_setup', 'io_uring_enter', 'io_uring_register',
  // @keyring
  'add_key', 'request_key', 'keyctl',
  // @cpu-emulation, @obsolete
  'modify_ldt', 'uselib', 'ustat', 'sysfs', '_sysctl', 'nfsservctl', 'create_module', 'get_kernel_syms', 'query_module', 'afs_syscall', 'tuxcall', 'security', 'vserver', 'getpmsg', 'putpmsg',
] as const;

/** Answered with ENOSYS: their flags or mode live in a struct the filter cannot read; glibc falls back to clone, fchmodat and openat. */
export const NOT_IMPLEMENTED = ['clone3', 'openat2', 'fchmodat2'] as const;

/** Calls whose mode argument (0-based index) must not carry S_ISUID or S_ISGID. */
export const MODE_ARG: Record<string, number> = { chmod: 1, fchmod: 1, fchmodat: 2, mkdir: 1, mkdirat: 2, mknod: 1, mknodat: 2, open: 2, openat: 3, creat: 1 };

// Classic BPF.
const LD_W_ABS = 0x20;
const JEQ_K = 0x15;
const JGE_K = 0x35;
const JSET_K = 0x45;
const RET_K = 0x06;
const RET_ALLOW = 0x7fff0000;
const RET_KILL_PROCESS = 0x80000000;
const retErrno = (e: number) => 0x00050000 | e;
// struct seccomp_data: nr (u32) at 0, arch (u32) at 4, args (u64 each) from 16; the low half of an argument is at 16 + 8 i (little-endian).
const NR = 0;
const ARCH = 4;
const arg = (i: number) => 16 + 8 * i;

interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}
const stmt = (code: number, k: number): Insn => ({ code, jt: 0, jf: 0, k });
const jump = (code: number, k: number, jt: number, jf: number): Insn => ({ code, jt, jf, k });

/**
 * The filter's instructions for an architecture (Node's process.arch name), or undefined when it has
 * no table here. `network`: a model split across RPC workers (docs/fleets.md) keeps the host's
 * network, so its filter allows every socket family and connect().
 */
export function childFilterProgram(arch: string = process.arch, o: { network?: boolean } = {}): Insn[] | undefined {
  const nr = SYSCALLS[arch as 'x64' | 'arm64'];
  const audit = AUDIT_ARCH[arch];
  if (!nr || audit === undefined) return undefined;
  const p: Insn[] = [stmt(LD_W_ABS, ARCH), jump(JEQ_K, audit, 1, 0), stmt(RET_K, RET_KILL_PROCESS), stmt(LD_W_ABS, NR)];
  // x32 system calls (bit 30 set) on x86-64.
  if (arch === 'x64') p.push(jump(JGE_K, 0x40000000, 0, 1), stmt(RET_K, RET_KILL_PROCESS));
  const deny = (name: string, errno: number) => {
    const n = nr[name];
    if (n !== undefined) p.push(jump(JEQ_K, n, 0, 1), stmt(RET_K, retErrno(errno)));
  };
  for (const s of DENIED) deny(s, EPERM);
  // No outbound connections of any kind (a child only listens on its unix socket and accepts).
  if (!o.network) deny('connect', EPERM);
  for (const s of NOT_IMPLEMENTED) deny(s, ENOSYS);
  // Argument checks: each block ends in a return, so A (the number) is only overwritten inside it.
  //   jeq NR, 0, 4 | ld arg | <test> | ret deny | ret allow
  const block = (name: string, argIndex: number, test: Insn, denyRet: number, denyWhenTestTrue: boolean) => {
    const n = nr[name];
    if (n === undefined) return;
    p.push(jump(JEQ_K, n, 0, 4), stmt(LD_W_ABS, arg(argIndex)), test);
    if (denyWhenTestTrue) p.push(stmt(RET_K, denyRet), stmt(RET_K, RET_ALLOW));
    else p.push(stmt(RET_K, RET_ALLOW), stmt(RET_K, denyRet));
  };
  // jset: true when any bit of the mask is set → next (deny); false → skip it (allow).
  block('clone', 0, jump(JSET_K, CLONE_NEW_MASK, 0, 1), retErrno(EPERM), true);
  for (const [name, i] of Object.entries(MODE_ARG)) block(name, i, jump(JSET_K, S_ISUID_ISGID, 0, 1), retErrno(EPERM), true);
  // jeq AF_UNIX: true → skip the deny to the allow.
  if (!o.network) for (const name of ['socket', 'socketpair']) block(name, 0, jump(JEQ_K, AF_UNIX, 0, 1), retErrno(EAFNOSUPPORT), false);
  // ioctl: two commands refused (TIOCSTI, TIOCLINUX).
  const ioctl = nr.ioctl;
  if (ioctl !== undefined) p.push(jump(JEQ_K, ioctl, 0, 4), stmt(LD_W_ABS, arg(1)), jump(JEQ_K, TIOCSTI, 1, 0), jump(JEQ_K, TIOCLINUX, 0, 1), stmt(RET_K, retErrno(EPERM)));
  p.push(stmt(RET_K, RET_ALLOW));
  return p;
}

/** The program as the kernel takes it (struct sock_filter[], 8 bytes each, little-endian): what setpriv --seccomp-filter and bwrap --seccomp read. */
export function childSeccompFilter(arch: string = process.arch, o: { network?: boolean } = {}): Buffer | undefined {
  const prog = childFilterProgram(arch, o);
  if (!prog) return undefined;
  const b = Buffer.alloc(prog.length * 8);
  prog.forEach((x, i) => {
    b.writeUInt16LE(x.code, i * 8);
    b.writeUInt8(x.jt, i * 8 + 2);
    b.writeUInt8(x.jf, i * 8 + 3);
    b.writeUInt32LE(x.k >>> 0, i * 8 + 4);
  });
  return b;
}

/**
 * Runs the program on one system call (for the tests: the same semantics as the kernel's classic BPF
 * for the instructions used here). Returns the filter's action word.
 */
export function runFilter(prog: Insn[], data: { nr: number; arch: number; args?: number[] }): number {
  const word = (off: number) => {
    if (off === NR) return data.nr >>> 0;
    if (off === ARCH) return data.arch >>> 0;
    return ((data.args ?? [])[(off - 16) / 8] ?? 0) >>> 0;
  };
  let a = 0;
  for (let pc = 0; pc < prog.length; ) {
    const x = prog[pc]!;
    if (x.code === LD_W_ABS) {
      a = word(x.k);
      pc++;
    } else if (x.code === RET_K) return x.k >>> 0;
    else {
      const hit = x.code === JEQ_K ? a === x.k >>> 0 : x.code === JGE_K ? a >= x.k >>> 0 : (a & x.k) !== 0;
      pc += 1 + (hit ? x.jt : x.jf);
    }
  }
  throw new Error('the filter ran past its end');
}

export const ACTION = { allow: RET_ALLOW, kill: RET_KILL_PROCESS, errno: retErrno, EPERM, ENOSYS, EAFNOSUPPORT, AUDIT_ARCH };
