import type { Distro } from './types.js';
import { debian } from './debian.js';
import { arch } from './arch.js';

export const distros: Record<Distro['name'], Distro> = { debian, arch };

export function distroFor(name: Distro['name']): Distro {
  return distros[name];
}
export type { Distro } from './types.js';
