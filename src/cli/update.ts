/** `aios update status|check|apply` (the image's command; src/update/): parses and calls, nothing else. */
import type { Command } from 'commander';
import { formatStatus } from '../update/status.js';
import { updateApply, updateCheck, updateStatus } from '../update/index.js';

export function registerUpdate(p: Command): void {
  const u = p
    .command('update')
    .description('updates of an appliance image (image.layout = "appliance"): the running version, boot counting, new versions from update.source (systemd-sysupdate)');
  u.command('status')
    .description('the running version and whether it is marked good, the installed versions (slots, boot entries), what boot counting did (a version that never became ready and was left)')
    .option('--json', 'print the status as JSON')
    .action(async (o: { json?: boolean }) => {
      const s = await updateStatus();
      process.stdout.write(o.json ? `${JSON.stringify(s)}\n` : formatStatus(s));
    });
  u.command('check')
    .description('ask update.source whether a newer version is there (exit 0: yes, and its version; exit 1: no)')
    .option('--json', 'print {available, detail} as JSON')
    .action(async (o: { json?: boolean }) => {
      const c = await updateCheck();
      if (o.json) process.stdout.write(`${JSON.stringify(c)}\n`);
      else process.stdout.write(c.available ? `${c.detail}: aios update apply installs it into the free slot\n` : `no newer version: ${c.detail}\n`);
      process.exitCode = c.available ? 0 : 1;
    });
  u.command('apply')
    .description('install the newest version (or the one named) into the free slot and the ESP; the next boot tries it, and it is kept only if aios-runtime becomes ready')
    .argument('[version]', 'a version from aios update check / the source (default: the newest)')
    .option('--reboot', 'reboot into it when something newer was installed')
    .action(async (version: string | undefined, o: { reboot?: boolean }) => {
      const rc = await updateApply({ version, reboot: o.reboot });
      if (rc === 0 && !o.reboot) {
        const s = await updateStatus().catch(() => undefined);
        const next = s?.versions.find((v) => v.entry?.state === 'trial' && !v.booted);
        if (next) process.stdout.write(`version ${next.version} is installed; reboot to try it (${next.entry?.triesLeft} tries: it is kept once aios-runtime is ready, else the machine goes back to ${s?.booted.version})\n`);
      }
      process.exitCode = rc;
    });
}
