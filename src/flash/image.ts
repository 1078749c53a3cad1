/**
 * The image side of `aios flash`: a raw disk image, or one compressed with zstd or xz that is
 * decompressed on the fly (by the zstd / xz tools). Every pass reads the image as a sequence of
 * fixed-size blocks, so writing and verifying line up block for block.
 */
import { open, stat } from 'node:fs/promises';
import { run, spawnStream, which, CommandError } from '../util/exec.js';
import { UserError } from '../util/errors.js';

export type ImageFormat = 'raw' | 'zstd' | 'xz';

export interface ImageInfo {
  path: string;
  format: ImageFormat;
  /** Bytes of the disk image (decompressed). */
  size: number;
  /** Bytes of the file on disk. */
  fileSize: number;
  /** Device and inode of the image file: the target must not be (or hold) it. */
  dev: number;
  ino: number;
  /** How `size` was obtained for a compressed image. */
  sizeFrom?: 'header' | 'decompressed';
}

const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);

function formatFromName(path: string): ImageFormat | undefined {
  if (/\.zst$/i.test(path)) return 'zstd';
  if (/\.xz$/i.test(path)) return 'xz';
  return undefined;
}

const TOOL: Record<Exclude<ImageFormat, 'raw'>, string> = { zstd: 'zstd', xz: 'xz' };

/**
 * Opens and sizes an image. A compressed image is decompressed once here (to nowhere) so that a
 * truncated or corrupt file is refused before a byte reaches the target, and its size is known
 * even when the compressed header does not record it.
 */
export async function inspectImage(path: string): Promise<ImageInfo> {
  const st = await stat(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') throw new UserError(`image ${path} does not exist`, 2, 'build one with `aios build image` (out/aios-default.raw)');
    throw new UserError(`cannot read image ${path}: ${e.message}`, 2);
  });
  if (!st.isFile()) throw new UserError(`image ${path} is not a regular file`, 2, 'pass a .raw, .raw.zst or .raw.xz disk image');
  if (st.size === 0) throw new UserError(`image ${path} is empty`, 2);
  const head = Buffer.alloc(8);
  const fh = await open(path, 'r');
  try {
    await fh.read(head, 0, 8, 0);
  } finally {
    await fh.close();
  }
  const byMagic: ImageFormat = head.subarray(0, 4).equals(ZSTD_MAGIC) ? 'zstd' : head.subarray(0, 6).equals(XZ_MAGIC) ? 'xz' : 'raw';
  const byName = formatFromName(path);
  if (byName && byName !== byMagic) {
    throw new UserError(
      `image ${path} is named like a ${byName} file but its content is ${byMagic === 'raw' ? 'not compressed' : byMagic}`,
      2,
      'rename it to match its content (.raw, .raw.zst or .raw.xz), or re-create it',
    );
  }
  const info: ImageInfo = { path, format: byMagic, size: st.size, fileSize: st.size, dev: st.dev, ino: st.ino };
  if (byMagic === 'raw') {
    if (st.size % 512 !== 0) throw new UserError(`image ${path} is ${st.size} bytes, not a whole number of 512-byte sectors: not a disk image`, 2);
    return info;
  }
  const tool = TOOL[byMagic];
  if (!(await which(tool))) {
    throw new UserError(`${tool} is needed to read ${path} but is not installed`, 3, `apt-get install ${tool} (or run scripts/setup.sh)`);
  }
  // Decompress once, counting: proves the whole stream is intact and gives the exact size.
  let size = 0;
  try {
    for await (const chunk of decompress(info)) size += chunk.length;
  } catch (e) {
    if (e instanceof CommandError) {
      throw new UserError(`image ${path} is corrupt or truncated (${tool} says: ${e.output.trim().split('\n').pop()}); nothing was written`, 2);
    }
    throw e;
  }
  info.size = size;
  info.sizeFrom = 'decompressed';
  // Cross-check with the size the container records, where it records one.
  const recorded = await recordedSize(info).catch(() => undefined);
  if (recorded !== undefined && recorded !== size) {
    throw new UserError(`image ${path}: its header says ${recorded} bytes but it decompresses to ${size}; nothing was written`, 2);
  }
  if (size === 0 || size % 512 !== 0) throw new UserError(`image ${path} decompresses to ${size} bytes, not a whole number of 512-byte sectors: not a disk image`, 2);
  return info;
}

/** The decompressed size the container header records (xz always, zstd when the frame has it). */
async function recordedSize(info: ImageInfo): Promise<number | undefined> {
  if (info.format === 'xz') {
    const { stdout } = await run(['xz', '--robot', '--list', info.path]);
    const totals = stdout.split('\n').find((l) => l.startsWith('totals\t'));
    const v = totals?.split('\t')[4];
    return v ? Number(v) : undefined;
  }
  if (info.format === 'zstd') {
    const { stdout } = await run(['zstd', '-l', '-v', info.path]);
    const m = /Decompressed Size:.*\((\d+) B\)/.exec(stdout);
    return m ? Number(m[1]) : undefined;
  }
  return undefined;
}

async function* decompress(info: ImageInfo): AsyncGenerator<Buffer> {
  const argv = info.format === 'zstd' ? ['zstd', '-d', '-c', '-q', '--', info.path] : ['xz', '-d', '-c', '-q', '--', info.path];
  const child = spawnStream(argv);
  let finished = false;
  try {
    for await (const chunk of child.stdout) yield chunk as Buffer;
    finished = true;
    await child.done;
  } finally {
    if (!finished) child.kill();
  }
}

/**
 * The image as consecutive blocks of `blockSize` bytes (the last one may be shorter), each a
 * fresh Buffer. For compressed images the tool's output is re-cut into blocks.
 */
export async function* imageBlocks(info: ImageInfo, blockSize: number): AsyncGenerator<Buffer> {
  if (info.format === 'raw') {
    const fh = await open(info.path, 'r');
    try {
      for (let pos = 0; pos < info.size; pos += blockSize) {
        const want = Math.min(blockSize, info.size - pos);
        const buf = Buffer.allocUnsafe(want);
        let got = 0;
        while (got < want) {
          const { bytesRead } = await fh.read(buf, got, want - got, pos + got);
          if (bytesRead === 0) throw new UserError(`image ${info.path} shrank while being read (at byte ${pos + got})`, 1);
          got += bytesRead;
        }
        yield buf;
      }
    } finally {
      await fh.close();
    }
    return;
  }
  let block = Buffer.allocUnsafe(blockSize);
  let fill = 0;
  let total = 0;
  for await (const chunk of decompress(info)) {
    let off = 0;
    while (off < chunk.length) {
      const n = Math.min(blockSize - fill, chunk.length - off);
      chunk.copy(block, fill, off, off + n);
      fill += n;
      off += n;
      if (fill === blockSize) {
        total += fill;
        yield block;
        block = Buffer.allocUnsafe(blockSize);
        fill = 0;
      }
    }
  }
  if (fill > 0) {
    total += fill;
    yield block.subarray(0, fill);
  }
  if (total !== info.size) throw new UserError(`image ${info.path} decompressed to ${total} bytes this time, ${info.size} before: it changed while flashing`, 1);
}
