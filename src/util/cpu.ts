/** CPU facts of the machine this runs on. */
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';

/** Physical cores (llama.cpp generates fastest with one thread per physical core, not per hyperthread). */
export function physicalCores(): number {
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const cores = new Set<string>();
    let phys = '0';
    for (const line of info.split('\n')) {
      const [k, v] = line.split(':').map((x) => x.trim());
      if (k === 'physical id') phys = v ?? '0';
      if (k === 'core id') cores.add(`${phys}:${v}`);
    }
    return cores.size || cpus().length;
  } catch {
    return cpus().length;
  }
}
