/** The human form of a doctor report: one aligned line per finding, the fix under it, the verdict last. */
import type { Report, Status } from './types.js';

const COLOUR: Record<Status | 'dim', string> = { ok: '32', warning: '33', problem: '31', dim: '2' };

/** Colour only on a terminal, and never when NO_COLOR is set to anything but the empty string (no-color.org). */
export function wantColour(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv = process.env): boolean {
  return stream.isTTY === true && !env.NO_COLOR;
}

export function formatReport(r: Report, o: { colour?: boolean } = {}): string {
  const paint = (c: keyof typeof COLOUR, s: string) => (o.colour ? `\x1b[${COLOUR[c]}m${s}\x1b[0m` : s);
  const statusW = Math.max(...r.findings.map((f) => f.status.length));
  const titleW = Math.max(...r.findings.map((f) => f.title.length));
  const indent = ' '.repeat(statusW + titleW + 4);
  const lines = [`aios doctor: ${r.target === 'host' ? 'build host' : r.target === 'machine' ? 'this machine' : r.target}, ${r.subject}`];
  for (const f of r.findings) {
    lines.push(`${paint(f.status, f.status.padEnd(statusW))}  ${f.title.padEnd(titleW)}  ${f.detail}`);
    if (f.fix && f.status !== 'ok') lines.push(`${indent}${paint('dim', 'fix:')} ${f.fix}`);
  }
  lines.push(`${paint(r.verdict.ok ? (r.verdict.warnings ? 'warning' : 'ok') : 'problem', 'verdict:')} ${r.verdict.text}`);
  return lines.join('\n') + '\n';
}
