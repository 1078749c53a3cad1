/**
 * The tools tree for real (src/build/tools-tree.ts, issue 17): the tree the default recipe's llama
 * stage would use with llama.toolchain = "tools-tree" (made with mmdebstrap into the aios cache on
 * first use, ~70 s here with a warm package cache; taken from the cache after), then a small C++
 * program with OpenMP and threads compiled in it through the same bubblewrap command line the
 * llama build uses: its libraries resolve inside the tree, it runs there, and its compiler is the
 * suite's own, not the host's. The llama.cpp build in the tree itself is measured in docs/gpu.md
 * (a cold compile is ~10 min on 2 cores: too long for this suite).
 */
import { describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { loadRecipe } from '../../src/config/load.js';
import { StageCache } from '../../src/build/cache.js';
import { llamaExec } from '../../src/build/llama.js';
import { ensureToolsTree, llamaToolsTreeSpec, toolsTreeRunArgv, toolsTreeVersions, TOOLS_TREE_STAGE } from '../../src/build/tools-tree.js';
import { defaultCacheDir } from '../../src/util/paths.js';
import { tmp } from '../helpers.js';

const PROGRAM = `#include <omp.h>
#include <cstdio>
#include <string>
#include <thread>
int main() {
  long sum = 0;
#pragma omp parallel for reduction(+ : sum) num_threads(2)
  for (int i = 1; i <= 1000; i++) sum += i;
  std::string s = "sum=" + std::to_string(sum);
  std::thread t([&] { s += " thread=ok"; });
  t.join();
  std::printf("%s\\n", s.c_str());
}
`;

describe('tools tree', () => {
  it("builds a C++/OpenMP program in the image suite's tree: libraries resolve there, it runs there, with the suite's compiler; the tree is read-only", { timeout: 10 * 60_000 }, async () => {
    const r = await loadRecipe('default', { sets: ['llama.toolchain=tools-tree'] });
    const cacheDir = defaultCacheDir();
    const cache = new StageCache(cacheDir);
    const log = join(tmp(), 'build.log');
    writeFileSync(log, '');
    const tree = await ensureToolsTree(llamaToolsTreeSpec(r), { cache, cacheDir, asRoot: process.getuid?.() === 0, log });
    expect(tree.root).toBe(join(cache.path(TOOLS_TREE_STAGE, tree.key), 'root'));
    // A second request is the cached tree.
    expect((await ensureToolsTree(llamaToolsTreeSpec(r), { cache, cacheDir, asRoot: process.getuid?.() === 0, log })).cached).toBe(true);

    const src = tmp();
    const build = tmp();
    const ccache = tmp();
    writeFileSync(join(src, 'hello.cpp'), PROGRAM);
    const x = llamaExec({ src, build, ccacheDir: ccache }, tree.root);
    const inTree = async (argv: string[]) => {
      const w = x.wrap(argv, { CCACHE_DIR: x.ccache });
      return execa(w.argv[0]!, w.argv.slice(1), { env: w.env, extendEnv: false, reject: false });
    };
    const cc = await inTree(['ccache', 'g++', '-O2', '-fopenmp', '-o', `${x.build}/hello`, `${x.src}/hello.cpp`]);
    expect(cc.exitCode, cc.stderr).toBe(0);

    const ldd = await inTree(['ldd', `${x.build}/hello`]);
    expect(ldd.exitCode, ldd.stderr).toBe(0);
    expect(ldd.stdout).not.toMatch(/not found/);
    expect(ldd.stdout).toMatch(/libgomp\.so\.1 => \/(usr\/)?lib\/x86_64-linux-gnu\/libgomp\.so\.1/);
    expect(ldd.stdout).toMatch(/libstdc\+\+\.so\.6 => /);

    const ran = await inTree([`${x.build}/hello`]);
    expect(ran.exitCode, ran.stderr).toBe(0);
    expect(ran.stdout.trim()).toBe('sum=500500 thread=ok');

    // The compiler and C library are the suite's (the default recipe pins trixie: gcc 14, glibc 2.41),
    // recorded in llama.json; this Debian 12 host has gcc 12 and glibc 2.36.
    expect(readFileSync(join(tree.root, 'etc/os-release'), 'utf8')).toMatch(/VERSION_CODENAME=trixie/);
    const v = await toolsTreeVersions(tree.root);
    expect(v.gcc).toMatch(/^gcc \(Debian 14\./);
    expect(v.glibc).toMatch(/GLIBC 2\.41/);

    // The tree is read-only to what runs in it.
    const touch = toolsTreeRunArgv(tree.root, ['touch', '/usr/aios-test']);
    const write = await execa(touch[0]!, touch.slice(1), { reject: false });
    expect(write.exitCode).not.toBe(0);
    expect(write.stderr).toMatch(/Read-only file system/);
  });
});
