/** aios-runtime as one JS file for the image's Node.js (esbuild), with its proto files and the model catalog beside it. */
import { build } from 'esbuild';
import { cp, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { PKG_ROOT } from '../util/paths.js';

export async function bundleRuntime(outDir: string): Promise<string> {
  await mkdir(outDir, { recursive: true });
  const outfile = join(outDir, 'aios-runtime.mjs');
  await build({
    entryPoints: [join(PKG_ROOT, 'src/runtime/main.ts')],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outfile,
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
  });
  await cp(join(PKG_ROOT, 'proto'), join(outDir, 'proto'), { recursive: true });
  await cp(join(PKG_ROOT, 'node_modules/@grpc/reflection/build/proto/grpc'), join(outDir, 'proto/grpc'), { recursive: true });
  // The model catalog for auto-install and `aios runtime pull` (runtime.catalog = "" reads this one).
  await cp(join(PKG_ROOT, 'models/catalog.toml'), join(outDir, 'catalog.toml'));
  return outfile;
}
