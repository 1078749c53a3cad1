import { describe, expect, it } from 'vitest';
import { accessWarnings, kernelPanic, parseCheckLog, qemuArgs } from '../../src/qemu/index.js';

const LOG = `\x1b[0;32m  OK  \x1b[0m] Reached target multi-user.target\r
AIOS-CHECK-BEGIN\r
AIOS-CHECK kernel=6.12.107+deb13-amd64\r
AIOS-CHECK cmdline=root=PARTUUID=x rw aios.check=1\r
AIOS-CHECK state=starting\r
AIOS-CHECK settled=yes\r
AIOS-CHECK multi_user_usec=44400000\r
AIOS-CHECK uptime=45.1\r
AIOS-CHECK failed=foo.service \r
AIOS-CHECK nfailed=1\r
AIOS-CHECK timing=FirmwareTimestampMonotonic=7000000 LoaderTimestampMonotonic=1000000 InitRDTimestampMonotonic=0 UserspaceTimestampMonotonic=13280000 \r
AIOS-CHECK thp=always [madvise] never\r
AIOS-CHECK swap=/dev/zram0:2012156 \r
AIOS-CHECK-FAILED-UNIT foo.service\r
AIOS-CHECK-END\r
`;

describe('boot check log', () => {
  it('parses the report the image prints', () => {
    const { complete, guest } = parseCheckLog(LOG);
    expect(complete).toBe(true);
    expect(guest).toMatchObject({
      kernel: '6.12.107+deb13-amd64',
      state: 'starting',
      settled: true,
      failedUnits: ['foo.service'],
      firmware: 6,
      loader: 1,
      kernelSeconds: 13.28,
      multiUser: 44.4,
      userspace: 31.12,
      thp: 'always [madvise] never',
    });
    expect(guest.timing).toBe('6 s (firmware) + 1 s (loader) + 13.28 s (kernel + initrd) + 31.12 s (userspace to multi-user)');
  });

  it('parses the runtime start-up report (and what systemctl reload did) and prints where the time went', async () => {
    const { runtimeStartupLines } = await import('../../src/cli/qemu.js');
    const { guest } = parseCheckLog(`AIOS-CHECK-BEGIN\r
AIOS-CHECK runtime_ready_usec=61100000\r
AIOS-CHECK runtime_activating_usec=30500000\r
AIOS-CHECK runtime_exec_usec=30700000\r
AIOS-CHECK runtime_startup=modules loaded 9000, config read 9300, operational model loading 9400 → ready 20000 (10600), probe → 25000 (5000), front ends up 12000, ready 25100\r
AIOS-CHECK runtime_reload=0 aios-tiny: not restarted (adapter files unchanged);\r
AIOS-CHECK runtime_exposure=1.7\r
AIOS-CHECK-SANDBOX child model-aios-tiny nnp=1 seccomp=2 filters=32 daemon_filters=31 caps=0000000000000000 userns=own netns=own pidns=own mntns=shared ifaces=lo\r
AIOS-CHECK-CHAIN aios-runtime.service +30.4s\r
AIOS-CHECK-CHAIN └─network.target @30.4s\r
AIOS-CHECK-END\r
`);
    expect(guest).toMatchObject({ runtimeReload: '0 aios-tiny: not restarted (adapter files unchanged);', runtimeReadyUsec: 61100000, runtimeActivatingUsec: 30500000, runtimeExecUsec: 30700000, runtimeChain: ['aios-runtime.service +30.4s', '└─network.target @30.4s'], runtimeExposure: 1.7, sandbox: ['child model-aios-tiny nnp=1 seccomp=2 filters=32 daemon_filters=31 caps=0000000000000000 userns=own netns=own pidns=own mntns=shared ifaces=lo'] });
    expect(runtimeStartupLines(guest)).toEqual([
      'unit started 30.5 s, process 30.7 s, ready 61.1 s after kernel start',
      'daemon (ms since its process started): modules loaded 9000, config read 9300, operational model loading 9400 → ready 20000 (10600), probe → 25000 (5000), front ends up 12000, ready 25100',
      'waited for:',
      '  aios-runtime.service +30.4s',
      '  └─network.target @30.4s',
      'model sandbox:',
      '  child model-aios-tiny nnp=1 seccomp=2 filters=32 daemon_filters=31 caps=0000000000000000 userns=own netns=own pidns=own mntns=shared ifaces=lo',
      'systemd-analyze security aios-runtime.service: exposure 1.7',
    ]);
  });

  it('finds a kernel panic in the serial log (qemu-test stops there, and under TCG boots once more)', () => {
    const log = '[    3.529174] Oops: int3: 0000 [#2] PREEMPT SMP NOPTI\r\n[    3.529503] Kernel panic - not syncing: Fatal exception in interrupt\r\n[    6.85] Shutting down cpus with NMI\r\n';
    expect(kernelPanic(log)).toBe('Kernel panic - not syncing: Fatal exception in interrupt');
    expect(kernelPanic('[ 1.0] Linux version 6.12\r\nAIOS-CHECK-BEGIN\r\n')).toBeUndefined();
  });

  it('knows an unfinished report', () => {
    expect(parseCheckLog('AIOS-CHECK-BEGIN\nAIOS-CHECK state=starting\n').complete).toBe(false);
    expect(parseCheckLog('nothing').complete).toBe(false);
  });

  it('boots UEFI from a snapshot of the image with the check flag via SMBIOS', async () => {
    const { argv } = await qemuArgs('/img.raw', { accel: 'tcg', serial: '/s.log', cmdlineExtra: 'aios.check=1' }, '/vars.fd');
    const s = argv.join(' ');
    expect(s).toContain('-machine q35,accel=tcg -cpu max');
    expect(s).toContain('-drive if=virtio,format=raw,file=/img.raw,snapshot=on');
    expect(s).toContain('-smbios type=11,value=io.systemd.boot.kernel-cmdline-extra=aios.check=1');
    expect(s).toMatch(/-drive if=pflash,format=raw,unit=0,file=\S+OVMF_CODE\S*\.fd,readonly=on/);
    expect(s).toContain('-serial file:/s.log');
    expect(s).not.toContain('virtserialport');
    const withPort = (await qemuArgs('/img.raw', { accel: 'tcg', serial: '/s.log', dataPort: { name: 'org.aios.bench', file: '/d/port.log' } }, '/vars.fd')).argv.join(' ');
    expect(withPort).toContain('-device virtio-serial-pci,id=vser0 -chardev file,id=aiosdata,path=/d/port.log -device virtserialport,bus=vser0.0,chardev=aiosdata,name=org.aios.bench');
    await expect(qemuArgs('/img.raw', { accel: 'tcg', serial: '/s.log', dataPort: { name: 'x', file: '/a,b' } }, '/vars.fd')).rejects.toThrow(/bad data port/);
  });

  it('attaches extra disks read-only after the image, in order (the guest sees /dev/vdb, /dev/vdc)', async () => {
    const s = (await qemuArgs('/img.raw', { accel: 'tcg', serial: '/s.log', snapshot: false, extraDisks: ['/u/update.ext4', '/u/two.img'] }, '/vars.fd')).argv.join(' ');
    expect(s).toContain('-drive if=virtio,format=raw,file=/img.raw -drive if=virtio,format=raw,readonly=on,file=/u/update.ext4 -drive if=virtio,format=raw,readonly=on,file=/u/two.img');
    await expect(qemuArgs('/img.raw', { accel: 'tcg', serial: '/s.log', extraDisks: ['/a,b'] }, '/vars.fd')).rejects.toThrow(/bad extra disk/);
  });
});

describe('qemu-test access warnings', () => {
  it('an image open on purpose (runtime.insecure_listen in its manifest) is warned about, naming its listeners; a TLS image or one without the runtime is not', () => {
    const rt = { enabled: true, listen: '0.0.0.0:50051', http_listen: '127.0.0.1:8080' };
    expect(accessWarnings({ runtime: { ...rt, insecure_listen: true } })).toEqual([
      "runtime.insecure_listen: the image's listeners beyond loopback accept anyone without authentication (0.0.0.0:50051, 127.0.0.1:8080)",
    ]);
    expect(accessWarnings({ runtime: { ...rt, tls: { ca: 'a', server: 'b', sans: [] } } })).toEqual([]);
    expect(accessWarnings({ runtime: null })).toEqual([]);
    expect(accessWarnings(undefined)).toEqual([]);
  });
});
