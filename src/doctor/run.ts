/**
 * Running a list of doctor checks and summing them up: shared by the build host's list and the
 * running machine's (which is bundled into the image, so this imports nothing else of aios).
 */
import type { Check, Purpose, Report, Result, Verdict } from './types.js';

/** Runs every check; one that throws becomes a warning ("could not check"), never a crash. */
export async function runChecks(checks: Check[], target: string, subject: string, can = 'a build can run', cannot = 'a build cannot run'): Promise<Report> {
  const findings: Result[] = await Promise.all(
    checks.map(async (c) => {
      try {
        return { id: c.id, title: c.title, ...(await c.run()) };
      } catch (e) {
        return { id: c.id, title: c.title, status: 'warning' as const, detail: `could not check: ${(e as Error)?.message ?? String(e)}` };
      }
    }),
  );
  return { target, subject, findings, verdict: verdictOf(findings, can, cannot) };
}

const ORDER: Purpose[] = ['build', 'boot-test', 'flash', 'kernel-build'];

export function verdictOf(findings: Result[], can = 'a build can run', cannot = 'a build cannot run'): Verdict {
  const problems = findings.filter((f) => f.status === 'problem').length;
  const warnings = findings.filter((f) => f.status === 'warning').length;
  const blocked = new Set(findings.flatMap((f) => (f.status === 'ok' ? [] : (f.blocks ?? []))));
  if (problems) blocked.add('build');
  const notBuild = ORDER.filter((p) => p !== 'build' && blocked.has(p));
  const n = (k: number, w: string) => `${k} ${w}${k === 1 ? '' : 's'}`;
  const text = problems
    ? `${cannot}: ${n(problems, 'problem')}${warnings ? `, ${n(warnings, 'warning')}` : ''}`
    : `${can}${warnings ? ` (${n(warnings, 'warning')}${notBuild.length ? `; cannot run: ${notBuild.join(', ')}` : ''})` : ''}`;
  return { ok: problems === 0, text, problems, warnings, cannot: ORDER.filter((p) => blocked.has(p)) };
}

/** The exit code: 0 when the verdict is ok (for the host: a build can run), 1 otherwise. */
export const exitCodeOf = (r: Report): number => (r.verdict.ok ? 0 : 1);
