/** The image's `aios` command (src/cli/machine.ts): only the running machine's verbs; bench hands its options to the image's entry point. */
import { describe, expect, it } from 'vitest';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { machineMain, machineProgram } from '../../src/cli/machine.js';
import { tmp } from '../helpers.js';

const names = (c: Command, prefix = ''): string[] => c.commands.flatMap((s) => [`${prefix}${s.name()}`, ...names(s, `${prefix}${s.name()} `)]);

describe("the image's aios command", () => {
  it('has ps, top, doctor, runtime …, update and bench, and none of the build-host verbs', () => {
    const p = machineProgram();
    const n = names(p);
    expect(n).toEqual(expect.arrayContaining(['ps', 'top', 'doctor', 'bench', 'runtime status', 'runtime load', 'runtime unload', 'runtime infer', 'runtime keys list', 'update status', 'update check', 'update apply']));
    for (const hostOnly of ['build', 'flash', 'qemu', 'qemu-test', 'kernel', 'models', 'summary']) expect(n).not.toContain(hostOnly);
    // Its doctor is the machine's (no recipe options), with the output forms scripts and the boot check read.
    const doctor = p.commands.find((c) => c.name() === 'doctor')!;
    expect(doctor.options.map((o) => o.long)).toEqual(['--address', '--json', '--json-lines']);
    expect(n).not.toContain('runtime serve'); // the daemon is its own bundle in the image
  });

  it('bench runs the entry point with the options as given, and returns its exit code', async () => {
    const d = tmp('aios-machine-cli-');
    const bench = join(d, 'bench');
    writeFileSync(bench, `#!/bin/sh\necho "$@" > ${d}/args\nexit 3\n`);
    chmodSync(bench, 0o755);
    expect(await machineMain(['node', 'aios', 'bench', '--reps', '3', '--model', 'x.gguf'], bench)).toBe(3);
    expect(readFileSync(join(d, 'args'), 'utf8')).toBe('--reps 3 --model x.gguf\n');
    process.exitCode = undefined;
    expect(await machineMain(['node', 'aios', 'bench'], join(d, 'missing'))).toBe(1);
    process.exitCode = undefined;
  });
});
