/** `aios flash`: write an image to a whole disk, with the typed confirmation and progress on stderr. */
import type { Command } from 'commander';
import { confirmationMatches, describeTarget, flash, type Progress } from '../flash/index.js';
import { formatSize } from '../util/size.js';
import { out } from './common.js';

export function registerFlash(p: Command): void {
  p.command('flash')
    .description('write a disk image (.raw, .raw.zst, .raw.xz) to a whole disk: safety checks, typed confirmation, progress, read-back verification')
    .argument('<image>', 'disk image, e.g. out/aios-default.raw (or .raw.zst / .raw.xz, decompressed on the fly), or a live ISO (out/<name>.iso is hybrid: it boots from a USB stick)')
    .argument('<device>', 'whole disk, e.g. /dev/sdb (not a partition, not mounted, not the running system\'s disk)')
    .option('-y, --yes', 'do not ask to type the device name back (every safety check still applies)')
    .option('--to-file', 'the target is a regular file, created at the image size if missing (for testing)')
    .option('--grow-root', 'grow the root partition, and an ext4 filesystem on it, to the end of the disk')
    .option('--json', 'print the result as JSON, no progress (needs --yes, or the name on stdin)')
    .action(async (image: string, device: string, o: { yes?: boolean; toFile?: boolean; growRoot?: boolean; json?: boolean }) => {
      const err = (s: string) => process.stderr.write(s.endsWith('\n') ? s : s + '\n');
      const tty = process.stderr.isTTY;
      let lastLine = 0;
      const onProgress = (pr: Progress) => {
        const now = Date.now();
        const end = pr.done === pr.total;
        if (!tty && !end && now - lastLine < 5000) return;
        lastLine = now;
        const pct = pr.total ? Math.floor((100 * pr.done) / pr.total) : 100;
        const line = `${pr.phase === 'write' ? 'writing ' : 'verifying'} ${formatSize(pr.done).padStart(10)} / ${formatSize(pr.total)}  ${String(pct).padStart(3)}%  ${formatSize(pr.bytesPerSecond)}/s  ETA ${Math.ceil(pr.etaSeconds)} s`;
        process.stderr.write(tty ? `\r${line.padEnd(79)}${end ? '\n' : ''}` : `${line}\n`);
      };
      const res = await flash({
        image,
        target: device,
        toFile: o.toFile,
        yes: o.yes,
        growRoot: o.growRoot,
        onProgress: o.json ? undefined : onProgress,
        onNote: o.json ? undefined : (s) => err(`note: ${s}`),
        confirm: async (img, t) => {
          err(`image:  ${img.path} (${img.format}, ${formatSize(img.size)}, ${img.size} bytes)`);
          err(`target: ${describeTarget(t).replace(/\n/g, '\n        ')}`);
          err(`EVERYTHING ON ${t.path} WILL BE OVERWRITTEN.`);
          process.stderr.write(`Type ${t.path} to confirm: `);
          const { createInterface } = await import('node:readline');
          const rl = createInterface({ input: process.stdin });
          const answer = await new Promise<string>((resolve) => {
            rl.once('line', resolve);
            rl.once('close', () => resolve(''));
          });
          rl.close();
          return confirmationMatches(answer, t);
        },
      });
      if (o.json) out(JSON.stringify(res, null, 2));
      else {
        out(`wrote    ${formatSize(res.write.bytes)} to ${res.target.path} in ${res.write.seconds.toFixed(1)} s (${formatSize(res.write.bytesPerSecond)}/s)`);
        out(`verified ${formatSize(res.verify.bytes)} in ${res.verify.seconds.toFixed(1)} s (${formatSize(res.verify.bytesPerSecond)}/s), sha256 ${res.verify.targetSha256}`);
        out(`root:    ${res.root.note}`);
      }
    });
}
