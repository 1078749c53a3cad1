/**
 * squashfs: the live ISO's compressed root (image.formats includes "iso"): the overlay's root as a
 * zstd squashfs, with the live-only files of templates/live added through a pseudo file (the root
 * tree itself is not changed). Needs: overlay. Output: root.squashfs and squashfs.json (size,
 * sha256, live files). Key: overlay key, rendered live files and SOURCE_DATE_EPOCH.
 */
import { stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { sourceDateEpoch, templateContext } from '../context.js';
import { rootContentBytes } from '../image.js';
import { squashfsArgv, writeLiveFiles } from '../live.js';
import { renderTree } from '../render.js';
import { run } from '../../util/exec.js';
import { sha256File } from '../../util/hash.js';
import { paths } from '../../util/paths.js';
import { formatSize } from '../../util/size.js';
import { defineStage, filesDigest, missingTools } from './common.js';

/** Bump when this stage's code changes what it produces, to invalidate old cache entries. */
const VERSION = 1;

export const squashfsStage = defineStage({
  name: 'squashfs',
  title: 'Compress the live root (squashfs)',
  output: 'iso',
  needs: ['overlay'],
  async check() {
    return missingTools({ mksquashfs: 'squashfs-tools', unsquashfs: 'squashfs-tools' });
  },
  async inputs(ctx, io) {
    const live = await renderTree(join(paths.templates, 'live'), templateContext(ctx.recipe, ctx.id));
    return { v: VERSION, overlay: io.need('overlay').key, live: filesDigest(live), sde: sourceDateEpoch() ?? null };
  },
  async run(ctx, dir, io) {
    const root = join(io.need('overlay').dir, 'root');
    const live = await renderTree(join(paths.templates, 'live'), templateContext(ctx.recipe, ctx.id));
    const sde = sourceDateEpoch();
    const time = sde ?? Math.floor(Date.now() / 1000);
    const pseudo = await writeLiveFiles(live, join(dir, 'live-files'), time);
    const out = join(dir, 'root.squashfs');
    ctx.progress(`mksquashfs (zstd) of ${formatSize(await rootContentBytes(root))}`);
    // Without SOURCE_DATE_EPOCH in its environment: mksquashfs would set every file's time to it;
    // the overlay stage clamped them instead, which keeps the packages' own mtimes.
    const env = { ...process.env } as Record<string, string>;
    delete env.SOURCE_DATE_EPOCH;
    await run(squashfsArgv({ root, out, pseudoFile: pseudo, replaced: live.map((f) => f.path), mkfsTime: sde }), { log: ctx.log, env, extendEnv: false });
    await writeFile(join(dir, 'squashfs.json'), JSON.stringify({ bytes: (await stat(out)).size, sha256: await sha256File(out), live: live.map((f) => f.path) }, null, 2));
  },
});
