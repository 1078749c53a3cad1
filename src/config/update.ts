/**
 * The appliance layout's updates (docs/appliance.md, issue 18): the [update] recipe table, its
 * load-time checks (through applianceProblems()), and the names shared by the build host's update
 * artifacts (out/update/, src/build/update.ts) and the image's systemd-sysupdate transfers
 * (templates/root/usr/lib/sysupdate.d/): one naming scheme, so that what `aios build image` writes
 * is what sysupdate's MatchPattern= finds. Pure: nothing here reads files or runs programs.
 */
import { z } from 'zod';

/** Where the running image looks for updates, by default: a directory on the writable /var (it survives updates). */
export const DEFAULT_UPDATE_SOURCE = '/var/lib/aios/update';

// A directory: absolute, normalized, no characters that would need quoting in a .transfer file.
const DIR_RE = /^\/(?:[A-Za-z0-9._-]+\/)*[A-Za-z0-9._-]*$/;

export const UpdateSchema = z
  .strictObject({
    source: z
      .string()
      .default(DEFAULT_UPDATE_SOURCE)
      .describe(
        'image.layout = "appliance": where the image\'s systemd-sysupdate looks for new versions: a directory in the image (an absolute path, e.g. a mounted update disk or a directory on /var) or an http(s) URL, holding what `aios build image` writes to out/update/ (the root and verity images, kernel, initrd and boot entry of each version, SHA256SUMS and, when signed, SHA256SUMS.gpg). Checked against SHA256SUMS always; the signature is checked when the build had a signing key (docs/appliance.md)',
      ),
  })
  .describe('Appliance updates with systemd-sysupdate (docs/appliance.md)');

export type UpdateConfig = z.output<typeof UpdateSchema>;

/** Problems of [update] with the rest of the recipe (exit 2 at load, naming the key). */
export function updateProblems(r: { image: { layout: string }; update: UpdateConfig }): { path: string; message: string }[] {
  const s = r.update.source;
  if (r.image.layout !== 'appliance') {
    return s !== DEFAULT_UPDATE_SOURCE ? [{ path: 'update.source', message: 'update.source is for image.layout = "appliance" (systemd-sysupdate into the A/B slots); the plain layout has no update mechanism: remove it or set image.layout = "appliance"' }] : [];
  }
  if (s.startsWith('/')) {
    if (!DIR_RE.test(s) || s.split('/').some((p) => p === '.' || p === '..')) {
      return [{ path: 'update.source', message: `update.source = "${s}": a directory must be an absolute path of letters, digits, ".", "_", "-" and "/" (no "." or ".." parts)` }];
    }
    return [];
  }
  let url: URL;
  try {
    url = new URL(s);
  } catch {
    return [{ path: 'update.source', message: `update.source = "${s}" is neither an absolute directory path nor an http(s) URL` }];
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return [{ path: 'update.source', message: `update.source = "${s}": only http:// and https:// URLs (or a directory path) are supported` }];
  if (/\s/.test(s)) return [{ path: 'update.source', message: `update.source = "${s}" contains white space` }];
  if (url.username || url.password) return [{ path: 'update.source', message: 'update.source must not carry a user name or password: it is written into the image, readable by anyone with the image' }];
  return [];
}

/**
 * The Path= of the transfers' [Source]: sysupdate reads SHA256SUMS (and SHA256SUMS.gpg) only from
 * url-file sources, so a directory becomes a file:// URL (which sysupdate accepts for url-file
 * besides http and https; a regular-file source would get no checksum and no signature check).
 * "%" is doubled: the transfer files expand specifiers in Path=.
 */
export function sysupdateSourceUrl(source: string): string {
  const url = source.startsWith('/') ? `file://${source.replace(/\/+$/, '') || '/'}` : source.replace(/\/+$/, '');
  return url.replace(/%/g, '%%');
}

/** The update artifacts of one version, as written to out/update/ and matched by the transfers' [Source] MatchPattern=. */
export function artifactNames(a: { version: string; rootHash: string; fs: 'erofs' | 'squashfs' }): { root: string; verity: string; kernel: string; initrd: string; entry: string } {
  const v = a.version;
  const u = uuidsOf(a.rootHash);
  return {
    // @u in the source pattern: sysupdate gives the slot it writes this partition UUID, so the
    // DPS rule (data partition UUID = first half of the root hash, hash partition = second half)
    // holds for every slot, and the entry's PARTUUID= names the right partitions.
    root: `aios_${v}_${u.data}.root.${a.fs}`,
    verity: `aios_${v}_${u.hash}.verity`,
    kernel: `aios_${v}.linux`,
    initrd: `aios_${v}.initrd`,
    entry: `aios_${v}.conf`,
  };
}

/** The ESP paths of a version's kernel and initrd (where the transfers put them; the entry names them). */
export function espKernelPaths(version: string): { kernel: string; initrd: string } {
  return { kernel: `aios/aios_${version}.linux`, initrd: `aios/aios_${version}.initrd` };
}

/** Every file name out/update/ may hold besides SHA256SUMS and SHA256SUMS.gpg (all versions). */
export const ARTIFACT_RE = /^aios_[0-9][A-Za-z0-9.]{0,15}(?:_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(?:root\.(?:erofs|squashfs)|verity)|\.(?:linux|initrd|conf))$/;

/** The version an artifact file name carries. */
export function artifactVersion(name: string): string | undefined {
  return ARTIFACT_RE.test(name) ? /^aios_([0-9][A-Za-z0-9.]*?)(?:_|\.(?:linux|initrd|conf)$)/.exec(name)?.[1] : undefined;
}

function uuidsOf(rootHash: string): { data: string; hash: string } {
  if (!/^[0-9a-f]{64}$/.test(rootHash)) throw new Error(`not a sha256 root hash: "${rootHash}"`);
  const u = (x: string) => `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
  return { data: u(rootHash.slice(0, 32)), hash: u(rootHash.slice(32)) };
}
