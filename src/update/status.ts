/**
 * `aios update status` on an appliance machine (docs/appliance.md): which version runs, which are
 * installed, and what boot counting did — read from the ESP's boot entries (systemd-boot's counters
 * in their names), the GPT labels of the root slots and systemd-boot's EFI variables. The decision
 * part (`summarize`) is pure: it takes the facts and does no I/O, so that every case is unit-tested.
 */

/** A boot entry's name: aios_<version>[+<tries left>[-<tries done>]].conf (systemd-boot boot counting). */
export interface EntryName {
  file: string;
  version: string;
  /** good: no counter (blessed, or never counted); trial: tries left; bad: no try left. */
  state: 'good' | 'trial' | 'bad';
  triesLeft?: number;
  triesDone?: number;
}

export function parseEntryName(file: string): EntryName | undefined {
  const m = /^aios_([A-Za-z0-9._~^-]+?)(?:\+(\d+)(?:-(\d+))?)?\.conf$/.exec(file);
  if (!m) return undefined;
  const [, version, left, done] = m as unknown as [string, string, string | undefined, string | undefined];
  if (left === undefined) return { file, version, state: 'good' };
  const triesLeft = Number(left);
  return { file, version, state: triesLeft > 0 ? 'trial' : 'bad', triesLeft, triesDone: done === undefined ? 0 : Number(done) };
}

/** Versions as systemd orders them for aios (numbers, SOURCE_DATE_EPOCH, dotted): numeric-aware. */
export function compareVersions(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}

export interface UpdateFacts {
  /** IMAGE_VERSION of the running root's os-release. */
  bootedVersion?: string;
  /** File names in the ESP's loader/entries. */
  entries: string[];
  /** Labels of the root partitions (GPT type root-<arch>) on the disk: aios_<version> or _empty. */
  slots: string[];
  /** systemd-boot's LoaderEntrySelected (the entry id it booted), when set. */
  selectedEntry?: string;
  /** systemd-boot's LoaderBootCountPath (set when the booted entry has a counter: a boot on trial). */
  bootCountPath?: string;
  /** The transfers' source (update.source as a URL) and whether they verify signatures. */
  source?: string;
  verify?: boolean;
}

export interface VersionStatus {
  version: string;
  booted: boolean;
  /** This version's root slot is on the disk (partition label aios_<version>). */
  slot: boolean;
  entry?: EntryName;
}

export interface UpdateStatus {
  booted: { version?: string; entry?: string; onTrial: boolean; triesLeft?: number; blessed: boolean };
  /** Newest first. */
  versions: VersionStatus[];
  /** Free root slots (label _empty). */
  emptySlots: number;
  /** What happened and what comes next, in sentences. */
  events: string[];
  source?: string;
  verify?: boolean;
}

/** The counter-less name of an entry (systemd-boot's entry id keeps the counter out). */
const baseName = (e: EntryName) => `aios_${e.version}.conf`;

export function summarize(f: UpdateFacts): UpdateStatus {
  const entries = f.entries.map(parseEntryName).filter((e): e is EntryName => !!e);
  const slotVersions = f.slots.map((l) => /^aios_(.+)$/.exec(l)?.[1]).filter((v): v is string => !!v && !v.endsWith('_verity'));
  const all = [...new Set([...entries.map((e) => e.version), ...slotVersions, ...(f.bootedVersion ? [f.bootedVersion] : [])])].sort((a, b) => compareVersions(b, a));
  const versions: VersionStatus[] = all.map((version) => ({
    version,
    booted: version === f.bootedVersion,
    slot: slotVersions.includes(version),
    ...(entries.find((e) => e.version === version) ? { entry: entries.find((e) => e.version === version)! } : {}),
  }));
  const bootedEntry = versions.find((v) => v.booted)?.entry;
  // The counter systemd-boot reported for this boot is the name before it decremented it; the
  // file now carries the decremented one, which is what is left.
  const onTrial = !!f.bootCountPath && bootedEntry?.state !== 'good';
  const events: string[] = [];
  const b = f.bootedVersion;
  if (!b) events.push('this root has no IMAGE_VERSION in its os-release: not an aios appliance image');
  for (const v of versions) {
    if (v.booted || !v.entry) continue;
    const newer = b !== undefined && compareVersions(v.version, b) > 0;
    if (v.entry.state === 'bad' && newer) {
      events.push(`version ${v.version} was tried ${v.entry.triesDone ?? 0} time(s) and never became ready (its boot was not marked good): systemd-boot went back to ${b}`);
    } else if (v.entry.state === 'trial' && newer) {
      events.push(`version ${v.version} is installed and not yet tried: the next boot starts it on trial (${v.entry.triesLeft} tries); reboot to start it`);
    } else if (v.entry.state === 'bad') {
      events.push(`version ${v.version} is marked bad (no tries left): systemd-boot boots it only when nothing else is there`);
    }
  }
  if (b && bootedEntry) {
    if (bootedEntry.state === 'good') events.push(`version ${b} is running and marked good (boot entry ${bootedEntry.file})`);
    else if (bootedEntry.state === 'trial') events.push(`version ${b} is running on trial: ${bootedEntry.triesLeft} tries left; it is marked good once aios-runtime is ready (aios-ready.service, then systemd-bless-boot)`);
    else events.push(`version ${b} is running on its last try: if aios-runtime does not become ready, the next boot goes back to the previous version`);
  } else if (b) events.push(`version ${b} is running; its boot entry (aios_${b}*.conf) is not in the ESP`);
  return {
    booted: {
      version: b,
      entry: f.selectedEntry ?? (bootedEntry ? baseName(bootedEntry) : undefined),
      onTrial,
      ...(bootedEntry?.triesLeft !== undefined ? { triesLeft: bootedEntry.triesLeft } : {}),
      blessed: bootedEntry?.state === 'good',
    },
    versions,
    emptySlots: f.slots.filter((l) => l === '_empty').length,
    events,
    ...(f.source ? { source: f.source } : {}),
    ...(f.verify !== undefined ? { verify: f.verify } : {}),
  };
}

export function formatStatus(s: UpdateStatus): string {
  const lines: string[] = [];
  lines.push(`running: ${s.booted.version ?? 'unknown'}${s.booted.blessed ? ' (marked good)' : s.booted.onTrial ? ` (on trial, ${s.booted.triesLeft ?? 0} tries left)` : ''}`);
  if (s.source) lines.push(`source:  ${s.source}${s.verify === false ? ' (signatures not checked: built without a signing key)' : s.verify ? ' (signed)' : ''}`);
  lines.push('');
  lines.push('VERSION  SLOT  BOOT ENTRY                 STATE');
  for (const v of s.versions) {
    const state = v.booted ? 'running' : !v.entry ? (v.slot ? 'root only (no entry)' : '') : v.entry.state === 'bad' ? 'bad' : v.entry.state === 'trial' ? 'to be tried' : 'installed';
    lines.push(`${v.version.padEnd(8)} ${(v.slot ? 'yes' : 'no').padEnd(5)} ${(v.entry?.file ?? '-').padEnd(26)} ${state}`);
  }
  lines.push(`free slots: ${s.emptySlots}`);
  lines.push('');
  for (const e of s.events) lines.push(e);
  return `${lines.join('\n')}\n`;
}
