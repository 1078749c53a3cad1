/**
 * What `aios doctor` is made of: checks, each a small object that probes one thing and returns one
 * finding. The build host's checks are one list (`hostChecks()` in host.ts); the checks of a running
 * aios machine are meant to be another list of the same shape, run and printed by the same code.
 */

export type Status = 'ok' | 'warning' | 'problem';

/** What a finding can stop: a build of the recipe, a boot test, flashing, a custom kernel build. */
export type Purpose = 'build' | 'boot-test' | 'flash' | 'kernel-build';

/** What one check found. */
export interface Finding {
  /** ok; warning: something other than a build cannot run, or runs degraded; problem: a build cannot run. */
  status: Status;
  /** One line. */
  detail: string;
  /** The command (or short instruction) that fixes it. */
  fix?: string;
  /** What cannot run because of this (empty or absent for ok and for mere slowness). */
  blocks?: Purpose[];
  /** Structured facts behind the detail (tools with their paths and packages, versions, free bytes), for --json. */
  facts?: Record<string, unknown>;
}

export interface Check {
  /** Stable, dotted id (`tools.image`, `space.cache`): the key scripts look for in --json. */
  id: string;
  title: string;
  run(): Promise<Finding>;
}

/** A check's finding with the check's id and title. */
export interface Result extends Finding {
  id: string;
  title: string;
}

export interface Verdict {
  /** No problem: for the host, a build of the recipe can run (exit 0). */
  ok: boolean;
  /** One sentence. */
  text: string;
  problems: number;
  warnings: number;
  /** What cannot run (union of the findings' `blocks`). */
  cannot: Purpose[];
}

export interface Report {
  /** Which list of checks ran (`host`; later `machine` for a running aios image). */
  target: string;
  /** What the checks were run against (the recipe's name for the host). */
  subject: string;
  findings: Result[];
  verdict: Verdict;
}
