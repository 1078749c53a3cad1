/**
 * `aios update status` (src/update/): boot entry names as systemd-boot's boot counting leaves them,
 * what the status says in each case of an update's life (installed, on trial, blessed, left after
 * its tries), and the machine facts read from a fake root (ESP entries, EFI variables in their
 * binary format, os-release, the transfer's source). The booted runs are in the appliance e2e test.
 */
import { describe, expect, it } from 'vitest';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { compareVersions, formatStatus, parseEntryName, summarize } from '../../src/update/status.js';
import { findEsp, osReleaseVersion, readFacts, readLoaderVar, requireAppliance, transferSource, updateApply, updateCheck } from '../../src/update/index.js';
import { machineMain } from '../../src/cli/machine.js';
import { tmp } from '../helpers.js';

const GUID = '4a67b082-0a4c-41cf-b6c7-440b29bb8c4f';
/** An EFI variable file as efivarfs shows it: 4 bytes of attributes, then NUL-terminated UTF-16LE. */
const efivar = (s: string) => Buffer.concat([Buffer.from([7, 0, 0, 0]), Buffer.from(`${s}\0`, 'utf16le')]);

describe('boot entry names (systemd-boot boot counting)', () => {
  it('parses blessed, counted and exhausted entries; ignores other files', () => {
    expect(parseEntryName('aios_2.conf')).toEqual({ file: 'aios_2.conf', version: '2', state: 'good' });
    expect(parseEntryName('aios_2+3.conf')).toEqual({ file: 'aios_2+3.conf', version: '2', state: 'trial', triesLeft: 3, triesDone: 0 });
    expect(parseEntryName('aios_3+2-1.conf')).toMatchObject({ version: '3', state: 'trial', triesLeft: 2, triesDone: 1 });
    expect(parseEntryName('aios_3+0-3.conf')).toMatchObject({ version: '3', state: 'bad', triesLeft: 0, triesDone: 3 });
    expect(parseEntryName('aios_1733212800+3-0.conf')).toMatchObject({ version: '1733212800', state: 'trial' });
    expect(parseEntryName('debian.conf')).toBeUndefined();
    expect(parseEntryName('aios_2.conf.bak')).toBeUndefined();
  });
  it('orders versions numerically (10 after 9)', () => {
    expect(['9', '10', '2'].sort(compareVersions)).toEqual(['2', '9', '10']);
  });
});

describe('summarize: what the status says', () => {
  const slots = ['aios_1', '_empty'];
  it('first boot of v1, blessed: running and marked good, one free slot', () => {
    const s = summarize({ bootedVersion: '1', entries: ['aios_1.conf'], slots, bootCountPath: undefined });
    expect(s.booted).toMatchObject({ version: '1', blessed: true, onTrial: false });
    expect(s.emptySlots).toBe(1);
    expect(s.events).toEqual(['version 1 is running and marked good (boot entry aios_1.conf)']);
  });
  it('v2 installed while v1 runs: to be tried on the next boot', () => {
    const s = summarize({ bootedVersion: '1', entries: ['aios_1.conf', 'aios_2+3-0.conf'], slots: ['aios_1', 'aios_2'] });
    expect(s.versions.map((v) => [v.version, v.slot, v.entry?.state, v.booted])).toEqual([
      ['2', true, 'trial', false],
      ['1', true, 'good', true],
    ]);
    expect(s.events[0]).toMatch(/^version 2 is installed and not yet tried: the next boot starts it on trial \(3 tries\)/);
    expect(formatStatus(s)).toMatch(/^2 +yes +aios_2\+3-0\.conf +to be tried$/m);
  });
  it('v2 on trial before its blessing', () => {
    const s = summarize({ bootedVersion: '2', entries: ['aios_1.conf', 'aios_2+2-1.conf'], slots: ['aios_1', 'aios_2'], bootCountPath: '\\loader\\entries\\aios_2+3-0.conf', selectedEntry: 'aios_2.conf' });
    expect(s.booted).toMatchObject({ version: '2', onTrial: true, triesLeft: 2, blessed: false, entry: 'aios_2.conf' });
    expect(s.events.at(-1)).toMatch(/running on trial: 2 tries left/);
  });
  it('v3 never became ready: back on v2, and it says so', () => {
    const s = summarize({ bootedVersion: '2', entries: ['aios_2.conf', 'aios_3+0-3.conf'], slots: ['aios_3', 'aios_2'] });
    expect(s.booted.blessed).toBe(true);
    expect(s.events).toContain('version 3 was tried 3 time(s) and never became ready (its boot was not marked good): systemd-boot went back to 2');
    expect(formatStatus(s)).toMatch(/^3 +yes +aios_3\+0-3\.conf +bad$/m);
  });
  it('the last try', () => {
    const s = summarize({ bootedVersion: '3', entries: ['aios_2.conf', 'aios_3+0-3.conf'], slots: ['aios_3', 'aios_2'], bootCountPath: 'x' });
    expect(s.events.at(-1)).toMatch(/last try/);
  });
  it('no IMAGE_VERSION: says this is not an appliance root', () => {
    expect(summarize({ entries: [], slots: [] }).events[0]).toMatch(/no IMAGE_VERSION/);
  });
});

describe('machine facts', () => {
  function fakeRoot(o: { transfers?: boolean } = {}) {
    const d = tmp('aios-update-root-');
    mkdirSync(join(d, 'boot/efi/loader/entries'), { recursive: true });
    writeFileSync(join(d, 'boot/efi/loader/entries/aios_1.conf'), 'title aios\n');
    writeFileSync(join(d, 'boot/efi/loader/entries/aios_2+3-0.conf'), 'title aios\n');
    mkdirSync(join(d, 'usr/lib'), { recursive: true });
    writeFileSync(join(d, 'usr/lib/os-release'), 'ID=debian\nIMAGE_ID=aios\nIMAGE_VERSION=1\n');
    if (o.transfers !== false) {
      mkdirSync(join(d, 'usr/lib/sysupdate.d'), { recursive: true });
      writeFileSync(join(d, 'usr/lib/sysupdate.d/10-aios-root.transfer'), '[Transfer]\nVerify=yes\n\n[Source]\nType=url-file\nPath=file:///var/lib/aios/update\n');
    }
    const efivars = join(d, 'efivars');
    mkdirSync(efivars);
    writeFileSync(join(efivars, `LoaderEntrySelected-${GUID}`), efivar('aios_1.conf'));
    const sysupdate = join(d, 'systemd-sysupdate');
    writeFileSync(sysupdate, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    return { root: d, efivars, sysupdate };
  }
  it('reads the ESP entries, os-release, the EFI variables and the transfer source', async () => {
    const p = fakeRoot();
    expect(findEsp(p.root)).toBe(join(p.root, 'boot/efi'));
    expect(osReleaseVersion(p.root)).toBe('1');
    expect(readLoaderVar(p.efivars, 'LoaderEntrySelected')).toBe('aios_1.conf');
    expect(readLoaderVar(p.efivars, 'LoaderBootCountPath')).toBeUndefined();
    expect(transferSource(p.root)).toEqual({ source: 'file:///var/lib/aios/update', verify: true });
    const f = await readFacts(p, async () => ['aios_1', '_empty']);
    expect(f).toMatchObject({ bootedVersion: '1', selectedEntry: 'aios_1.conf', slots: ['aios_1', '_empty'], source: 'file:///var/lib/aios/update', verify: true });
    expect(f.entries.sort()).toEqual(['aios_1.conf', 'aios_2+3-0.conf']);
    expect(summarize(f).events[0]).toMatch(/version 2 is installed/);
  });
  it('refuses on a machine without the transfers (a plain image), exit 2, naming what is missing', async () => {
    const p = fakeRoot({ transfers: false });
    expect(() => requireAppliance(p)).toThrow(/sysupdate\.d is missing.*image\.layout = "appliance"/);
    await expect(updateApply({}, p)).rejects.toMatchObject({ exitCode: 2 });
  });
  it('check: systemd-sysupdate check-new\'s exit 0 + version, exit 1 + nothing, and a failure said with its words', async () => {
    const p = fakeRoot();
    const fake = (code: number, out: string, err: string) => writeFileSync(p.sysupdate, `#!/bin/sh\n[ "$1" = check-new ] || exit 9\nprintf '%s' '${out}'\nprintf '%s\\n' '${err}' >&2\nexit ${code}\n`, { mode: 0o755 });
    fake(0, '3\n', 'Signature verification succeeded.');
    expect(await updateCheck(p)).toEqual({ available: '3', detail: 'version 3 at file:///var/lib/aios/update, signature verified' });
    fake(1, '', 'Determining available update sets…');
    expect(await updateCheck(p)).toEqual({ detail: 'nothing newer than installed at file:///var/lib/aios/update' });
    fake(1, '', 'Failed to retrieve signature file');
    await expect(updateCheck(p)).rejects.toThrow(/check-new failed \(exit 1\): Failed to retrieve signature file/);
  });
  it('refuses a version that is not a version', async () => {
    await expect(updateApply({ version: '2; reboot' }, fakeRoot())).rejects.toThrow(/bad version/);
  });
  it('the image command has update status|check|apply, and says what is wrong on this (non-appliance) host', async () => {
    const err: string[] = [];
    const w = process.stderr.write;
    process.stderr.write = ((s: string) => (err.push(String(s)), true)) as typeof process.stderr.write;
    try {
      // This test host has no /usr/lib/sysupdate.d with aios transfers (or no systemd-sysupdate).
      expect(await machineMain(['node', 'aios', 'update', 'status'])).toBe(2);
    } finally {
      process.stderr.write = w;
    }
    expect(err.join('')).toMatch(/cannot be updated in place/);
  });
});
