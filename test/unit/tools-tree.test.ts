/**
 * The tools tree (src/build/tools-tree.ts, issue 17) and llama.toolchain: the recipe key, the
 * tree's cache key and inputs, the llama stage's key, the mmdebstrap and bubblewrap command lines,
 * the host preflight, and one real bubblewrap run with the host's / standing in for a tree. The
 * real tree and a real compile in it are measured in docs/gpu.md.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { loadRecipe } from '../../src/config/load.js';
import { StageCache } from '../../src/build/cache.js';
import { llamaExec, llamaHostProblems, toolchainId } from '../../src/build/llama.js';
import {
  INSIDE,
  LLAMA_TOOLS_PACKAGES,
  TOOLS_TREE_STAGE,
  TOOLS_TREE_VERSION,
  llamaToolsTreeSpec,
  toolsTreeBootstrapArgv,
  toolsTreeInputs,
  toolsTreeKey,
  toolsTreeProblems,
  toolsTreeRunArgv,
} from '../../src/build/tools-tree.js';
import { llamaStage, type BuildContext } from '../../src/build/stages/index.js';
import { hashOf } from '../../src/util/hash.js';
import { recipes, tmp } from '../helpers.js';

describe('llama.toolchain', () => {
  it('defaults to host; tools-tree is accepted; anything else is refused naming the key', async () => {
    expect((await loadRecipe('default')).llama.toolchain).toBe('host');
    expect((await loadRecipe('default', { sets: ['llama.toolchain=tools-tree'] })).llama.toolchain).toBe('tools-tree');
    const f = recipes({ bad: 'extends = "default"\n[llama]\ntoolchain = "docker"\n' });
    await expect(loadRecipe(f.bad!)).rejects.toThrow(/llama\.toolchain/);
  });
});

describe('tools tree cache key', () => {
  const spec = (sets: string[] = []) => loadRecipe('default', { sets }).then(llamaToolsTreeSpec);

  it("is the recipe's suite and mirror with llama.cpp's build tools", async () => {
    const s = await spec();
    expect(s).toEqual({ distro: 'debian', suite: 'trixie', mirror: 'http://deb.debian.org/debian', components: ['main'], packages: [...LLAMA_TOOLS_PACKAGES] });
    expect(s.packages).toEqual(expect.arrayContaining(['build-essential', 'cmake', 'ninja-build', 'ccache', 'git', 'pkg-config']));
    expect(toolsTreeInputs(s)).toMatchObject({ v: TOOLS_TREE_VERSION, suite: 'trixie', arch: 'amd64' });
  });

  it('changes with the suite, the mirror, the components and the package list; not with their order', async () => {
    const s = await spec();
    const k = toolsTreeKey(s);
    expect(toolsTreeKey(await spec(['base.suite=forky']))).not.toBe(k);
    expect(toolsTreeKey(await spec(['base.mirror=http://mirror.example/debian']))).not.toBe(k);
    expect(toolsTreeKey({ ...s, components: ['main', 'non-free'] })).not.toBe(k);
    expect(toolsTreeKey({ ...s, packages: [...s.packages, 'nvidia-cuda-toolkit'] })).not.toBe(k);
    expect(toolsTreeKey({ ...s, packages: [...s.packages].reverse() })).toBe(k);
    // A template or hostname change is nothing the tree depends on.
    expect(toolsTreeKey(await spec(['system.hostname=other']))).toBe(k);
    expect(k).toBe(hashOf(TOOLS_TREE_STAGE, toolsTreeInputs(s)));
  });
});

describe('llama stage key with the toolchain', () => {
  const inputs = async (sets: string[]) => {
    const recipe = await loadRecipe('default', { sets });
    return llamaStage.inputs({ recipe, outputs: {} } as unknown as BuildContext) as Promise<{ toolchain: Record<string, string> }>;
  };

  it('host: the host compilers; tools-tree: the tree key, never the host gcc', async () => {
    const host = await inputs([]);
    expect(host.toolchain.gcc).toMatch(/gcc/);
    const tree = await inputs(['llama.toolchain=tools-tree']);
    const r = await loadRecipe('default', { sets: ['llama.toolchain=tools-tree'] });
    expect(tree.toolchain).toEqual({ toolchain: 'tools-tree', suite: 'trixie', tree: toolsTreeKey(llamaToolsTreeSpec(r)) });
    expect(hashOf('llama', tree)).not.toBe(hashOf('llama', host));
    // Another suite's tree is another toolchain.
    expect(hashOf('llama', await inputs(['llama.toolchain=tools-tree', 'base.suite=forky']))).not.toBe(hashOf('llama', tree));
    // Without a host gcc on PATH the tools-tree key is the same (it does not ask the host).
    const old = process.env.PATH;
    process.env.PATH = tmp();
    try {
      expect(await toolchainId(r.llama, { key: 'K', suite: 'trixie' })).toEqual({ toolchain: 'tools-tree', suite: 'trixie', tree: 'K' });
    } finally {
      process.env.PATH = old;
    }
    await expect(toolchainId(r.llama)).rejects.toThrow(/needs the tools tree/);
  });
});

describe('command lines', () => {
  it('mmdebstrap: the suite, the packages, the shared package cache, the mount points', async () => {
    const s = llamaToolsTreeSpec(await loadRecipe('default'));
    const argv = toolsTreeBootstrapArgv(s, { root: '/c/stages/tools-tree/k/root', pkgCache: '/c/packages/debian-trixie', asRoot: true });
    expect(argv[0]).toBe('mmdebstrap');
    expect(argv).toContain('--mode=root');
    expect(argv).toContain('--variant=minbase');
    expect(argv).toContain('--components=main');
    expect(argv).toContain('--include=build-essential,cmake,ninja-build,ccache,git,pkg-config');
    expect(argv).toContain("--setup-hook=sync-in '/c/packages/debian-trixie' /var/cache/apt/archives/");
    expect(argv).toContain("--customize-hook=sync-out /var/cache/apt/archives '/c/packages/debian-trixie'");
    expect(argv).toContain(`--customize-hook=mkdir -p "$1"${INSIDE.src} "$1"${INSIDE.build} "$1"${INSIDE.ccache}`);
    expect(argv.slice(-3)).toEqual(['trixie', '/c/stages/tools-tree/k/root', 'http://deb.debian.org/debian']);
    expect(toolsTreeBootstrapArgv(s, { root: '/r', pkgCache: '/p', asRoot: false })).toContain('--mode=unshare');
  });

  it('bubblewrap: the tree read-only as /, the binds, a clean environment, no network, then the command', () => {
    const argv = toolsTreeRunArgv('/t', ['cmake', '--version'], { binds: [{ host: '/h/src', inside: '/aios/src', ro: true }, { host: '/h/b', inside: '/aios/build' }], env: { CCACHE_DIR: '/aios/ccache' } });
    expect(argv.slice(0, 4)).toEqual(['bwrap', '--ro-bind', '/t', '/']);
    const has = (seq: string[]) => argv.join('\0').includes(seq.join('\0'));
    for (const seq of [['--ro-bind', '/h/src', '/aios/src'], ['--bind', '/h/b', '/aios/build'], ['--setenv', 'CCACHE_DIR', '/aios/ccache'], ['--setenv', 'HOME', '/tmp']]) expect(has(seq), seq.join(' ')).toBe(true);
    expect(argv).toContain('--clearenv');
    expect(argv).toContain('--unshare-net');
    expect(argv).toContain('--die-with-parent');
    expect(argv.slice(-3)).toEqual(['--', 'cmake', '--version']);
  });

  it('the llama build: on the host as is; in the tree under /aios with the source read-only', () => {
    const dirs = { src: '/s', build: '/b', ccacheDir: '/c' };
    const host = llamaExec(dirs);
    expect([host.src, host.build, host.ccache]).toEqual(['/s', '/b', '/c']);
    const h = host.wrap(['cmake', '-S', '/s'], { CCACHE_DIR: '/c' });
    expect(h.argv).toEqual(['cmake', '-S', '/s']);
    expect(h.env.CCACHE_DIR).toBe('/c');
    expect(h.env.PATH).toBe(process.env.PATH);
    const tree = llamaExec(dirs, '/tree');
    expect([tree.src, tree.build, tree.ccache]).toEqual([INSIDE.src, INSIDE.build, INSIDE.ccache]);
    const t = tree.wrap(['cmake', '--build', INSIDE.build], { CCACHE_DIR: INSIDE.ccache });
    expect(t.argv).toEqual(
      toolsTreeRunArgv('/tree', ['cmake', '--build', INSIDE.build], {
        binds: [
          { host: '/s', inside: INSIDE.src, ro: true },
          { host: '/b', inside: INSIDE.build },
          { host: '/c', inside: INSIDE.ccache },
        ],
        env: { CCACHE_DIR: INSIDE.ccache },
      }),
    );
  });

  it("runs for real: reads the read-only bind, cannot write it, writes the writable one, sees only lo (its own network namespace) and none of the caller's environment", async () => {
    // The host's own / stands in for a tree (the binds go under the fresh /tmp, where bwrap can make mount points).
    const inDir = tmp();
    const outDir = tmp();
    writeFileSync(join(inDir, 'a'), 'from the host\n');
    const argv = toolsTreeRunArgv('/', ['sh', '-c', 'cat /tmp/in/a; echo x > /tmp/in/b 2>/dev/null || echo ro; echo done > /tmp/out/c; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " "; echo "home=$HOME secret=${AIOS_TEST_SECRET:-unset}"'], {
      binds: [
        { host: inDir, inside: '/tmp/in', ro: true },
        { host: outDir, inside: '/tmp/out' },
      ],
    });
    const r = await execa(argv[0]!, argv.slice(1), { env: { AIOS_TEST_SECRET: 'hunter2' }, reject: false });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.split('\n')).toEqual(['from the host', 'ro', 'lo', 'home=/tmp secret=unset']);
    expect(readFileSync(join(outDir, 'c'), 'utf8')).toBe('done\n');
    expect(existsSync(join(inDir, 'b'))).toBe(false);
  });
});

describe('host preflight', () => {
  /** A PATH holding only these host commands (sh for `which` itself). */
  function pathWith(cmds: string[]): string {
    const d = tmp();
    for (const c of ['sh', ...cmds]) {
      const from = ['/usr/local/bin', '/usr/bin', '/bin', '/usr/sbin', '/sbin'].map((p) => join(p, c)).find((p) => existsSync(p));
      if (from) symlinkSync(from, join(d, c));
    }
    return d;
  }
  async function withPath<T>(path: string, f: () => Promise<T>): Promise<T> {
    const old = process.env.PATH;
    process.env.PATH = path;
    try {
      return await f();
    } finally {
      process.env.PATH = old;
    }
  }
  const bigFree = () => Promise.resolve(1024 ** 4);

  it('tools-tree demands mmdebstrap and bubblewrap, not the host compilers; host demands the compilers', async () => {
    const tree = await loadRecipe('default', { sets: ['llama.toolchain=tools-tree'] });
    const cache = new StageCache(tmp(), 2, bigFree);
    const bare = pathWith(['git', 'npm']);
    const p = await withPath(bare, () => llamaHostProblems(tree.llama, { base: tree.base, cache }));
    expect(p).toEqual([
      'mmdebstrap not found (install the Debian package mmdebstrap): llama.toolchain = "tools-tree" needs it',
      'bwrap not found (install the Debian package bubblewrap): llama.toolchain = "tools-tree" needs it',
    ]);
    expect(await withPath(pathWith(['git', 'npm', 'mmdebstrap', 'bwrap']), () => llamaHostProblems(tree.llama, { base: tree.base, cache }))).toEqual([]);
    const host = await loadRecipe('default');
    const h = await withPath(bare, () => llamaHostProblems(host.llama));
    expect(h.join('\n')).toMatch(/cmake not found[\s\S]*ninja not found[\s\S]*g\+\+ not found[\s\S]*gcc not found/);
    expect(h.join('\n')).not.toMatch(/mmdebstrap/);
  });

  it('demands the space for the tree unless it is cached', async () => {
    const r = await loadRecipe('default', { sets: ['llama.toolchain=tools-tree'] });
    const dir = tmp();
    const cache = new StageCache(dir, 2, () => Promise.resolve(512 * 1024 ** 2));
    const p = await toolsTreeProblems(r, { cache });
    expect(p).toHaveLength(1);
    expect(p[0]).toMatch(/only 512(\.0)? MiB free; the tools tree for trixie needs about 1(\.0)? GiB on top of a build's 3(\.0)? GiB/);
    // The same tree already in the cache: nothing more to make room for.
    const key = toolsTreeKey(llamaToolsTreeSpec(r));
    const at = cache.path(TOOLS_TREE_STAGE, key);
    mkdirSync(at, { recursive: true });
    writeFileSync(join(at, 'stage.json'), JSON.stringify({ stage: TOOLS_TREE_STAGE, key, inputs: {}, created: '', seconds: 0 }));
    expect(await toolsTreeProblems(r, { cache })).toEqual([]);
  });

  it('refuses a non-Debian base, with what to do; CUDA is built in the tree, never with a host nvcc', async () => {
    const arch = await loadRecipe('default', { sets: ['llama.toolchain=tools-tree', 'base.distro=arch', 'base.suite=rolling'] });
    expect((await toolsTreeProblems(arch, { cache: new StageCache(tmp(), 2, bigFree) })).join('\n')).toMatch(/needs base\.distro = "debian".*use llama\.toolchain = "host"/);
    const cuda = await loadRecipe('cuda');
    expect(await llamaHostProblems(cuda.llama, { base: cuda.base, cache: new StageCache(tmp(), 2, bigFree) })).toEqual([]);
    // A CUDA tree not yet cached needs its own room: the toolkit is gigabytes, not the CPU tree's 1 GiB.
    const small = new StageCache(tmp(), 2, async () => 3 * 1024 ** 3);
    expect((await llamaHostProblems(cuda.llama, { base: cuda.base, cache: small })).join('\n')).toMatch(/tools tree for trixie with the CUDA toolkit needs about 10\.0 GiB/);
    expect(await llamaHostProblems({ ...cuda.llama, toolchain: 'host' })).toEqual([expect.stringMatching(/llama\.gpu = "cuda" is compiled in the tools tree .*set llama\.toolchain = "tools-tree"/)]);
  });
});
