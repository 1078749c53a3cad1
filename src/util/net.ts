/** Small network helpers shared by the runtime, qemu-test and the benchmarks. */
import { createServer, isIP } from 'node:net';

/** A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** "10.77.0.0/24" → the parts, or undefined when it is not an IPv4 address with an optional prefix length. */
export function parseCidr4(s: string): { addr: string; bits: number } | undefined {
  const [addr, bits, more] = s.split('/');
  if (more !== undefined || isIP(addr ?? '') !== 4) return undefined;
  if (bits === undefined) return { addr: addr!, bits: 32 };
  if (!/^\d{1,2}$/.test(bits) || Number(bits) > 32) return undefined;
  return { addr: addr!, bits: Number(bits) };
}

const toInt = (a: string) => a.split('.').reduce((n, o) => n * 256 + Number(o), 0);
/** Whether `addr` (or prefix) lies inside `cidr`. */
export function inCidr(addr: string, cidr: string): boolean {
  const a = parseCidr4(addr);
  const c = parseCidr4(cidr);
  if (!a || !c || a.bits < c.bits) return false;
  const mask = c.bits === 0 ? 0 : (0xffffffff << (32 - c.bits)) >>> 0;
  return ((toInt(a.addr) & mask) >>> 0) === ((toInt(c.addr) & mask) >>> 0);
}
