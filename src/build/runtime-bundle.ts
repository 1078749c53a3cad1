/**
 * aios-runtime for the image's Node.js (esbuild): the entry `aios-runtime.mjs` (config, the early
 * start of the operational model) and the chunk it imports afterwards (the daemon), with the proto
 * files and the model catalog beside them. Chunk names carry a content hash (reproducible).
 */
import { build, type BuildOptions } from 'esbuild';
import { cp, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PKG_ROOT } from '../util/paths.js';

/**
 * esbuild settings every bundle for the image's Node.js shares (the runtime's, the `aios` command's):
 * ESM with chunks named `<prefix>-[name]-[hash]` (reproducible), for Node 20, not minified.
 */
export function imageBundleOptions(prefix: string, outDir: string): BuildOptions {
  return {
    bundle: true,
    splitting: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outdir: outDir,
    outExtension: { '.js': '.mjs' },
    chunkNames: `${prefix}-[name]-[hash]`,
    minify: false,
    legalComments: 'none',
    logLevel: 'silent',
    // Bundled CommonJS dependencies use require() and __dirname: give the ESM bundle both.
    banner: {
      js: [
        "import { createRequire as __aiosCreateRequire } from 'node:module';",
        "import { fileURLToPath as __aiosFileURLToPath } from 'node:url';",
        "import { dirname as __aiosDirname } from 'node:path';",
        'const require = __aiosCreateRequire(import.meta.url);',
        'const __filename = __aiosFileURLToPath(import.meta.url);',
        // @grpc/reflection reads its protos from join(__dirname, '../../proto/…'): point that at proto/ beside the bundle.
        "const __dirname = __aiosDirname(__filename) + '/lib/bundle';",
      ].join(' '),
    },
  };
}

/** `catalogText`: the catalog to ship instead of models/catalog.toml (the recipe's runtime.catalog merged in: mergedCatalog). */
export async function bundleRuntime(outDir: string, catalogText?: string): Promise<string> {
  await mkdir(outDir, { recursive: true });
  const outfile = join(outDir, 'aios-runtime.mjs');
  await build({ ...imageBundleOptions('aios-runtime', outDir), entryPoints: { 'aios-runtime': join(PKG_ROOT, 'src/runtime/main.ts') } });
  await cp(join(PKG_ROOT, 'proto'), join(outDir, 'proto'), { recursive: true });
  await cp(join(PKG_ROOT, 'node_modules/@grpc/reflection/build/proto/grpc'), join(outDir, 'proto/grpc'), { recursive: true });
  // The model catalog for auto-install and `aios runtime pull` (runtime.catalog = "" reads this one).
  if (catalogText !== undefined) await writeFile(join(outDir, 'catalog.toml'), catalogText);
  else await cp(join(PKG_ROOT, 'models/catalog.toml'), join(outDir, 'catalog.toml'));
  return outfile;
}
