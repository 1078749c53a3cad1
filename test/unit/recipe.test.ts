import { describe, expect, it } from 'vitest';
import { loadRecipe, parseSet, deepMerge, isLoopback } from '../../src/config/load.js';
import { RecipeError } from '../../src/util/errors.js';
import { recipes, cli, tmp } from '../helpers.js';
import { readdirSync } from 'node:fs';
import { recipeReference } from '../../src/config/docs.js';
import { mountOptions } from '../../src/build/context.js';

async function problems(p: Promise<unknown>): Promise<RecipeError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(RecipeError);
  return e as RecipeError;
}

describe('recipe loading', () => {
  it('models: store defaults to "var"; "image" keeps the file in the root; anything else is refused naming the key', async () => {
    const r = await loadRecipe('default');
    expect(r.models.map((m) => m.store)).toEqual(['var']);
    expect((await loadRecipe('default', { sets: ['models=[{name="m", level="operational", source="synth", store="image"}]'] })).models[0]!.store).toBe('image');
    await expect(loadRecipe('default', { sets: ['models=[{name="m", level="operational", source="synth", store="usr"}]'] })).rejects.toThrow(/models\.0\.store/);
  });
  it('resolves the default recipe with every default filled in', async () => {
    const r = await loadRecipe('default');
    expect(r.name).toBe('aios-default');
    expect(r.base).toMatchObject({ distro: 'debian', suite: 'trixie', mirror: 'http://deb.debian.org/debian' });
    expect(r.filesystem.root).toBe('ext4');
    expect(mountOptions(r)).toEqual(['noatime', 'commit=60']);
    expect(mountOptions({ ...r, filesystem: { root: 'xfs' } })).toEqual(['noatime']);
    expect(r.zram).toEqual({ enabled: true, algorithm: 'zstd', size: 'ram' });
    expect(r.journald).toEqual({ storage: 'volatile', max_use: '50M' });
    expect(r.tuning.transparent_hugepage).toBe('madvise');
    expect(r.tuning.mitigations).toBe(true);
    expect(r.boot.timeout).toBe(0);
    expect(r.sources[0]).toMatch(/images\/default\.toml$/);
  });

  it('names file, key path and what is allowed for an unknown key (exit code 2)', async () => {
    const f = recipes({ bad: '[base]\ndistro = "debian"\nflavour = "x"\n' });
    const e = await problems(loadRecipe(f.bad!));
    expect(e.exitCode).toBe(2);
    expect(e.file).toBe(f.bad);
    expect(e.problems).toHaveLength(1);
    expect(e.problems[0]!.path).toBe('base.flavour');
    expect(e.problems[0]!.message).toMatch(/unknown key \(allowed here: distro, suite, mirror, packages\)/);
  });

  it('reports wrong types and bad enum values with their paths, all at once', async () => {
    const f = recipes({ bad: '[boot]\ntimeout = "soon"\n[base]\ndistro = "gentoo"\n[image]\nesp_size = "big"\n' });
    const e = await problems(loadRecipe(f.bad!));
    const byPath = Object.fromEntries(e.problems.map((p) => [p.path, p.message]));
    expect(Object.keys(byPath).sort()).toEqual(['base.distro', 'boot.timeout', 'image.esp_size']);
    expect(byPath['base.distro']).toMatch(/debian.*arch/);
    expect(byPath['boot.timeout']).toMatch(/number/);
    expect(byPath['image.esp_size']).toMatch(/size such as 512M/);
  });

  it('reports TOML syntax errors with a line number', async () => {
    const f = recipes({ bad: '[base\ndistro = "debian"\n' });
    const e = await problems(loadRecipe(f.bad!));
    expect(e.problems[0]!.message).toMatch(/TOML syntax error at line 1/);
  });

  it('merges an extends chain, child over parent, arrays replaced', async () => {
    const f = recipes({
      parent: 'description = "p"\n[base]\npackages = ["htop"]\n[system]\nhostname = "parent"\ntimezone = "Europe/Berlin"\n',
      child: 'extends = "parent.toml"\n[system]\nhostname = "child"\n[base]\npackages = ["vim"]\n',
    });
    const r = await loadRecipe(f.child!);
    expect(r.system.hostname).toBe('child');
    expect(r.system.timezone).toBe('Europe/Berlin');
    expect(r.base.packages).toEqual(['vim']);
    expect(r.description).toBe('p');
    expect(r.sources).toEqual([f.child, f.parent]);
  });

  it('extends a shipped recipe by name', async () => {
    const f = recipes({ mine: 'extends = "default"\n[system]\nhostname = "mine"\n' });
    const r = await loadRecipe(f.mine!);
    expect(r.system.hostname).toBe('mine');
    expect(r.image.name).toBe('aios-default');
  });

  it('rejects extends cycles and missing parents', async () => {
    const f = recipes({ a: 'extends = "b.toml"\n', b: 'extends = "a.toml"\n', c: 'extends = "nope"\n' });
    expect((await problems(loadRecipe(f.a!))).problems[0]!.message).toMatch(/extends cycle: a.toml -> b.toml -> a.toml/);
    expect((await problems(loadRecipe(f.c!))).problems[0]).toMatchObject({ path: 'extends', message: expect.stringMatching(/"nope" not found/) });
  });

  it('applies --set overrides with TOML values, including dotted sysctl names', async () => {
    const r = await loadRecipe('default', { sets: ['image.size=4G', 'zram.enabled=false', 'tuning.sysctl.vm.swappiness=10', 'base.packages=["htop"]'] });
    expect(r.image.size).toBe('4G');
    expect(r.zram.enabled).toBe(false);
    expect(r.tuning.sysctl['vm.swappiness']).toBe(10);
    expect(r.base.packages).toEqual(['htop']);
    expect(parseSet('system.hostname=box')).toEqual({ path: ['system', 'hostname'], value: 'box' });
  });

  it('validates --set values like recipe values', async () => {
    const e = await problems(loadRecipe('default', { sets: ['filesystem.root=btrfs'] }));
    expect(e.problems[0]!.path).toBe('filesystem.root');
    expect(e.file).toMatch(/with --set filesystem.root=btrfs/);
    await problems(loadRecipe('default', { sets: ['noequals'] }));
  });

  it('refuses ext4 mount options on an xfs root, duplicate model names and two models on one level', async () => {
    const e = await problems(loadRecipe('default', { sets: ['filesystem.root=xfs', 'filesystem.mount_options=["noatime","commit=60"]'] }));
    expect(e.problems).toEqual([{ path: 'filesystem.mount_options', message: '"commit=60" is an ext4 option; XFS would refuse to mount with it' }]);
    const f = recipes({
      m: 'extends = "default"\n[[models]]\nname = "a"\nlevel = "operational"\nsource = "synth"\n[[models]]\nname = "a"\nsource = "catalog"\nid = "nope"\n',
    });
    const m = await problems(loadRecipe(f.m!));
    const text = m.problems.map((p) => `${p.path}: ${p.message}`).join('\n');
    expect(text).toMatch(/models.1.name: "a" is already used by models.0/);
    expect(text).toMatch(/models.1.id: "nope" is not in models\/catalog.toml/);
  });

  it('aios-runtime needs llama.cpp and an operational model', async () => {
    const e = await problems(loadRecipe('default', { sets: ['models=[]'] }));
    expect(e.problems).toEqual([{ path: 'runtime.enabled', message: expect.stringMatching(/needs an operational model/) }]);
    const f = await problems(loadRecipe('default', { sets: ['llama.enabled=false', 'runtime.enabled=true', 'models=[]'] }));
    expect(f.problems.map((p) => p.path)).toEqual(['runtime.enabled', 'runtime.enabled']);
    expect((await loadRecipe('default', { sets: ['runtime.enabled=false', 'models=[]'] })).runtime.enabled).toBe(false);
  });

  it('refuses a listener beyond loopback without TLS unless runtime.insecure_listen says so', async () => {
    // The default recipe listens on 0.0.0.0:50051 with runtime.tls = true.
    expect((await loadRecipe('default')).runtime).toMatchObject({ listen: '0.0.0.0:50051', tls: true, insecure_listen: false, http_listen: '127.0.0.1:8080' });
    const e = await problems(loadRecipe('default', { sets: ['runtime.tls=false'] }));
    expect(e.exitCode).toBe(2);
    expect(e.problems).toEqual([{ path: 'runtime.listen', message: expect.stringMatching(/0\.0\.0\.0:50051.*runtime\.tls = true.*runtime\.insecure_listen = true/) }]);
    const h = await problems(loadRecipe('default', { sets: ['runtime.tls=false', 'runtime.listen="127.0.0.1:50051"', 'runtime.http_listen="[::]:8080"'] }));
    expect(h.problems.map((p) => p.path)).toEqual(['runtime.http_listen']);
    expect((await loadRecipe('default', { sets: ['runtime.tls=false', 'runtime.listen="127.0.0.1:50051"'] })).runtime.tls).toBe(false);
    expect((await loadRecipe('default', { sets: ['runtime.tls=false', 'runtime.insecure_listen=true'] })).runtime.insecure_listen).toBe(true);
  });

  it('aios build image refuses it too (exit 2, naming the keys) before anything is built', async () => {
    const out = tmp('aios-build-refused-');
    const cache = tmp('aios-build-refused-cache-');
    const r = await cli(['build', 'image', '--set', 'runtime.tls=false', '-o', out, '--cache-dir', cache]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/runtime\.listen: .*0\.0\.0\.0:50051.*runtime\.tls = true.*runtime\.insecure_listen = true/);
    expect(readdirSync(out)).toEqual([]);
    expect(readdirSync(cache)).toEqual([]);
  });

  it('isLoopback: 127.0.0.0/8 (also IPv4-mapped), ::1 and localhost only', () => {
    expect(['127.0.0.1:1', '127.1.2.3:80', '[::1]:5', 'localhost:8080', '[::ffff:127.0.0.1]:80'].map(isLoopback)).toEqual([true, true, true, true, true]);
    expect(['0.0.0.0:1', '[::]:5', '10.0.0.1:80', '128.0.0.1:80', ':50051'].map(isLoopback)).toEqual([false, false, false, false, false]);
  });

  it('deepMerge does not share nested objects with its inputs', () => {
    const a = { x: { y: 1 } };
    const m = deepMerge(a, { x: { z: 2 } });
    expect(m).toEqual({ x: { y: 1, z: 2 } });
    expect(a).toEqual({ x: { y: 1 } });
  });

  it('generates a recipe reference that documents every section', () => {
    const md = recipeReference();
    for (const k of ['base.distro', 'system.hostname', 'filesystem.root', 'image.size', 'zram.algorithm', 'tuning.mitigations', 'kernel.fragments']) {
      expect(md).toContain(`\`${k}\``);
    }
  });
});

describe('aios summary (CLI)', () => {
  it('prints the resolved recipe as JSON', async () => {
    const r = await cli(['summary', '--json', '--set', 'system.hostname=box']);
    expect(r.exitCode).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.system.hostname).toBe('box');
    expect(j.derived.kernel_cmdline).toMatch(/root=PARTUUID=[0-9a-f-]{36} /);
    expect(j.derived.kernel_cmdline).toContain('transparent_hugepage=madvise');
    expect(j.derived.kernel_cmdline).not.toContain('mitigations=off');
    expect(j.derived.packages).toContain('linux-image-amd64');
  });

  it('exits 2 with file, key path and expectation for a bad recipe', async () => {
    const f = recipes({ bad: '[image]\nsize = 12\n' });
    const r = await cli(['summary', '--recipe', f.bad!]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain(f.bad!);
    expect(r.stderr).toMatch(/image\.size: /);
    expect(r.stdout).toBe('');
  });

  it('warns when mitigations are turned off', async () => {
    const r = await cli(['summary', '--json', '--set', 'tuning.mitigations=false']);
    const j = JSON.parse(r.stdout);
    expect(j.derived.kernel_cmdline).toContain('mitigations=off');
    expect(j.derived.warnings.join(' ')).toMatch(/UNSAFE|trusted/);
  });
});

describe('docs/recipe.md', () => {
  it('is the current output of `aios docs recipe`', async () => {
    const { readFileSync } = await import('node:fs');
    const { join } = await import('node:path');
    const { REPO } = await import('../helpers.js');
    expect(readFileSync(join(REPO, 'docs/recipe.md'), 'utf8').trim()).toBe(recipeReference().trim());
  });
});
