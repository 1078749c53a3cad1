/** Durable writes: fsync(2) of a file's data, and of a directory (the names in it, a rename). */
import { open } from 'node:fs/promises';

/** fsync(2) of a file's data. */
export async function syncFile(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** fsync(2) of a directory: the names in it (a rename) are on the disk. */
export async function syncDir(path: string): Promise<void> {
  await syncFile(path);
}
