/**
 * XFS root without mounting: a mkfs.xfs prototype file generated from the tree, then
 * `mkfs.xfs -p proto`. The prototype format (mkfs.xfs(8)) is read by every xfsprogs, so bookworm's
 * 6.1 works as well as trixie's 6.13 (whose xfs_protofile writes the same format). Limits of the
 * format: no extended attributes, hard links become copies, no sticky bit (systemd-tmpfiles
 * restores 1777 on /tmp, /var/tmp and /run/lock at boot), names may not contain whitespace.
 */
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { UserError } from '../util/errors.js';

export interface ProtoResult {
  proto: string;
  /** Paths whose sticky bit the format cannot carry. */
  stickyDropped: string[];
}

function modeString(type: string, mode: number): string {
  return `${type}${mode & 0o4000 ? 'u' : '-'}${mode & 0o2000 ? 'g' : '-'}${(mode & 0o777).toString(8).padStart(3, '0')}`;
}

export async function xfsProtofile(root: string): Promise<ProtoResult> {
  const lines: string[] = ['/', '0 0'];
  const stickyDropped: string[] = [];
  const rootSt = await lstat(root);
  lines.push(`${modeString('d', rootSt.mode)} ${rootSt.uid} ${rootSt.gid}`);

  async function walk(dir: string, rel: string, depth: number): Promise<void> {
    const entries = (await readdir(dir)).sort();
    const indent = ' '.repeat(depth);
    for (const name of entries) {
      const p = join(dir, name);
      const relPath = `${rel}/${name}`;
      if (/\s/.test(name)) {
        throw new UserError(`filesystem.root = "xfs": ${relPath} has whitespace in its name, which an XFS prototype file cannot express; use ext4 or rename it`, 1);
      }
      const st = await lstat(p);
      const owner = `${st.uid} ${st.gid}`;
      if (st.mode & 0o1000) stickyDropped.push(relPath);
      if (st.isDirectory()) {
        lines.push(`${indent}${name} ${modeString('d', st.mode)} ${owner}`);
        await walk(p, relPath, depth + 1);
        lines.push(`${indent}$`);
      } else if (st.isFile()) {
        if (/\s/.test(p)) throw new UserError(`filesystem.root = "xfs": the build path ${p} contains whitespace; move the cache dir`, 1);
        lines.push(`${indent}${name} ${modeString('-', st.mode)} ${owner} ${p}`);
      } else if (st.isSymbolicLink()) {
        const target = await readlink(p);
        if (/\s/.test(target)) throw new UserError(`filesystem.root = "xfs": symlink ${relPath} -> "${target}" has whitespace in its target`, 1);
        lines.push(`${indent}${name} ${modeString('l', st.mode)} ${owner} ${target}`);
      } else if (st.isCharacterDevice() || st.isBlockDevice()) {
        const major = Math.floor(st.rdev / 256) & 0xfff;
        const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
        lines.push(`${indent}${name} ${modeString(st.isCharacterDevice() ? 'c' : 'b', st.mode)} ${owner} ${major} ${minor}`);
      } else if (st.isFIFO()) {
        lines.push(`${indent}${name} ${modeString('p', st.mode)} ${owner}`);
      }
      // sockets are skipped: they are recreated by whoever listens on them
    }
  }
  await walk(root, '', 1);
  lines.push('$', '');
  return { proto: lines.join('\n'), stickyDropped };
}
