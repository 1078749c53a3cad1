/**
 * overlay: the image's root tree. A copy of the rootfs stage's root (the cached rootfs is never
 * changed), then templates/root rendered with the recipe (boot-time kernel wishes folded into the
 * command line), the rootfs/ overlay, the time zone, the aios-runtime bundle, units enabled and
 * masked, the root password, the llama.cpp binaries (checked to run inside the root) and the models
 * (with runtime.install_models their directory group aios, 2775, so the runtime may pull more);
 * with the runtime also the image's `aios` command (/usr/bin/aios: ps, top, runtime …, bench).
 * With a custom kernel (kernel.build): the stock linux-image packages purged, the kernel stage's
 * kernel and modules copied in, depmod and a fresh initramfs inside the root.
 * Needs: rootfs, llama, models; uses: kernel (when the recipe builds one). Output: root/,
 * packages.json, llama.json, models.json. Key: those stages' keys, rendered templates, the overlay
 * tree, the runtime sources, units, password, time zone and SOURCE_DATE_EPOCH.
 */
import { chmod, chown, copyFile, cp, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import type { ResolvedRecipe } from '../../config/schema.js';
import { sourceDateEpoch } from '../context.js';
import { renderTree, writeRendered } from '../render.js';
import { bundleRuntime } from '../runtime-bundle.js';
import { bundleCli, CLI_SOURCES, installCliLauncher } from '../cli-bundle.js';
import { RuntimeConfigSchema } from '../../runtime/config.js';
import { run } from '../../util/exec.js';
import { UserError } from '../../util/errors.js';
import { hashTree, sha256 } from '../../util/hash.js';
import type { Pki } from '../../pki/index.js';
import { paths, PKG_ROOT } from '../../util/paths.js';
import { contextWithWishes, defineStage, filesDigest, kernelWishes, missingTools } from './common.js';
import { versionLine, type InstalledModel } from './models.js';
import { mergedCatalog } from '../../models/catalog.js';
import { applianceVersion } from '../appliance.js';
import { triadStaticBinary, triadStaticDigest } from '../../bench/triad.js';
import { llamaBinaries } from '../llama.js';
import type { BuildContext, StageOutput } from './index.js';

/** Bump when this stage's code changes what it produces, to invalidate old cache entries. */
const VERSION = 9;

/** Units enabled in every image (systemctl enable inside the root). */
function unitsToEnable(r: ResolvedRecipe): string[] {
  const u = ['aios-check.service', 'aios-bench.service'];
  if (r.runtime.enabled) u.push('aios-runtime.service');
  // [fleet] role = "worker" (docs/fleets.md): ggml-rpc-server, and the firewall it requires.
  if (r.fleet.role === 'worker') u.push('aios-rpc-worker.service', ...(r.fleet.heads.length ? ['aios-rpc-firewall.service'] : []));
  // gpu.driver (docs/gpu.md): the driver's modules and device nodes before the runtime, where there is a GPU.
  if (r.gpu.driver !== 'none') u.push('aios-gpu.service');
  if (r.system.network === 'dhcp') u.push('systemd-networkd.service');
  return u;
}

export const overlayStage = defineStage({
  name: 'overlay',
  title: 'Apply templates and rootfs/ overlay',
  needs: ['rootfs', 'llama', 'models'],
  uses: ['kernel'],
  async check(ctx) {
    const problems = await missingTools({ cp: 'coreutils', chroot: 'coreutils', ...(ctx.recipe.runtime.enabled && ctx.recipe.runtime.tls ? { openssl: 'openssl' } : {}), ...(ctx.recipe.llama.enabled ? { cc: 'gcc' } : {}) });
    if (ctx.recipe.runtime.enabled && ctx.recipe.runtime.catalog) problems.push(...mergedCatalog(ctx.recipe.runtime.catalog).problems);
    return problems;
  },
  async inputs(ctx, io) {
    const r = ctx.recipe;
    const files = await renderTree(join(paths.templates, 'root'), await contextWithWishes(ctx));
    return {
      v: VERSION,
      rootfs: io.need('rootfs').key,
      llama: io.need('llama').key,
      models: io.need('models').key,
      // Only with a custom kernel, so that every other recipe keeps its cache key.
      ...(io.use('kernel') ? { kernel: io.use('kernel')!.key } : {}),
      // The bundle includes the GGUF reader, fetch and the catalog (src/models, models/) and helpers of src/util.
      runtime: r.runtime.enabled ? (await Promise.all(['src/runtime', 'proto', 'src/models', 'models', 'src/util'].map((d) => hashTree(join(PKG_ROOT, d))))).join('') : null,
      // The image's `aios` command (ps, top, runtime …, bench), bundled beside the runtime.
      // The recipe's own catalog entries (runtime.catalog), only when it has some (other recipes keep their keys).
      ...(r.runtime.enabled && r.runtime.catalog ? { catalog: sha256(await readFile(r.runtime.catalog)) } : {}),
      cli: r.runtime.enabled ? (await Promise.all(CLI_SOURCES.map((d) => hashTree(join(PKG_ROOT, d))))).join('') : null,
      files: filesDigest(files),
      wishSymbols: await wishSymbols(ctx),
      overlay: await hashTree(paths.rootfsOverlay),
      masked: r.system.masked_units,
      enable: unitsToEnable(r),
      password: r.system.root_password_hash ?? null,
      timezone: r.system.timezone,
      sde: sourceDateEpoch() ?? null,
      // Only when a model is kept in the root (other recipes keep their keys).
      ...(r.models.some((m) => m.store === 'image') ? { imageModels: r.models.filter((m) => m.store === 'image').map((m) => m.name) } : {}),
      // The bench entry point's bandwidth probe (src/bench/triad.c compiled static on this host).
      triad: r.llama.enabled ? await triadStaticDigest() : null,
      // The certificates (public) and the hashed API keys: a new server key comes with a new
      // certificate, so no secret is needed in the key (which is written to the cache's metadata).
      credentials: ctx.pki ? await credentialsDigest(ctx.pki) : null,
      // image.layout = "appliance" only (other recipes keep their keys): the version in os-release and
      // the update signing key's fingerprint (its public key goes into the image).
      ...(r.image.layout === 'appliance' ? { appliance: { version: applianceVersion(r), updateKey: ctx.updateSigner?.fingerprint ?? null } } : {}),
    };
  },
  async run(ctx, dir, io) {
    const r = ctx.recipe;
    const root = join(dir, 'root');
    const rootfs = io.need('rootfs');
    ctx.progress('copying the root filesystem');
    // A copy: the cached rootfs stage output is never changed by later stages.
    await run(['cp', '-a', '--reflink=auto', join(rootfs.dir, 'root'), root], { log: ctx.log });
    await cp(join(rootfs.dir, 'packages.json'), join(dir, 'packages.json'));
    const kernel = io.use('kernel');
    if (kernel) await installKernel(ctx, kernel, root, dir);
    ctx.progress('rendering templates');
    const files = await renderTree(join(paths.templates, 'root'), await contextWithWishes(ctx));
    await writeRendered(files, root);
    const cfg = files.find((f) => f.path === 'etc/aios/config.toml');
    if (cfg) {
      const parsed = RuntimeConfigSchema.safeParse(parseToml(cfg.content));
      if (!parsed.success) throw new Error(`templates/root/etc/aios/config.toml.hbs renders a file aios-runtime would reject: ${parsed.error.message}`);
    }
    // The boot check reports the running kernel's value of each of these (aios qemu-test: live wishes);
    // the image's `aios doctor` checks the wishes themselves (kernel-wishes.json, as in the manifest).
    const symbols = await wishSymbols(ctx);
    if (symbols.length) {
      await mkdir(join(root, 'usr/lib/aios'), { recursive: true });
      await writeFile(join(root, 'usr/lib/aios/kernel-wishes'), symbols.join('\n') + '\n');
      const wishes = (await kernelWishes(ctx)).results.map((w) => ({ symbol: w.symbol, value: w.value, fragment: w.fragment, line: w.line, reason: w.reason }));
      await writeFile(join(root, 'usr/lib/aios/kernel-wishes.json'), JSON.stringify(wishes, null, 1) + '\n');
    }
    ctx.progress('copying rootfs/');
    await run(['cp', '-a', '--no-preserve=ownership', `${paths.rootfsOverlay}/.`, `${root}/`], { log: ctx.log });
    for (const d of ['boot/efi', 'var/lib/aios/models', 'etc/aios']) await mkdir(join(root, d), { recursive: true });
    // Time zone.
    const zone = join('usr/share/zoneinfo', r.system.timezone);
    if (existsSync(join(root, zone))) {
      await rm(join(root, 'etc/localtime'), { force: true });
      await symlink(`/${zone}`, join(root, 'etc/localtime'));
    } else if (r.system.timezone !== 'UTC') {
      ctx.warnings.push(`timezone ${r.system.timezone}: no /${zone} in the image (add tzdata to base.packages); using UTC`);
    }
    if (r.runtime.enabled) {
      ctx.progress('bundling aios-runtime');
      // The shipped catalog, with the recipe's runtime.catalog entries appended (checked in check()).
      const merged = r.runtime.catalog ? mergedCatalog(r.runtime.catalog) : undefined;
      if (merged?.problems.length) throw new UserError(merged.problems.join('\n'), 2);
      await bundleRuntime(join(root, 'usr/lib/aios-runtime'), merged?.text);
      await installRuntimeAccess(ctx, root);
      await installCli(ctx, root);
    }
    ctx.progress('enabling and masking units');
    for (const u of unitsToEnable(r)) await run(['chroot', root, 'systemctl', 'enable', u], { log: ctx.log });
    // networkd's Also= pulls in wait-online, which would hold boot for 2 minutes without a link.
    if (r.system.network === 'dhcp') await run(['chroot', root, 'systemctl', 'disable', 'systemd-networkd-wait-online.service'], { log: ctx.log, reject: false });
    for (const u of r.system.masked_units) {
      const p = join(root, 'etc/systemd/system', u);
      await rm(p, { force: true });
      await symlink('/dev/null', p);
    }
    if (r.system.root_password_hash) await run(['chroot', root, 'usermod', '-p', r.system.root_password_hash, 'root'], { log: ctx.log });
    if (r.llama.enabled) await installLlama(ctx, io.need('llama'), root, dir);
    if (r.llama.enabled) await installBenchTools(ctx, io.need('llama'), root);
    await installModels(ctx, io.need('models'), root, dir);
    // runtime.install_models: the runtime (group aios) may add models (as the tmpfiles line does at boot).
    if (r.runtime.enabled && r.runtime.install_models) await run(['chroot', root, 'sh', '-c', 'chgrp aios /var/lib/aios/models && chmod 2775 /var/lib/aios/models'], { log: ctx.log });
    await firstBootWorkAtBuild(ctx, root);
    if (r.image.layout === 'appliance') await readonlyRootSetup(ctx, root);
    const sde = sourceDateEpoch();
    if (sde !== undefined) {
      // Reproducible builds: nothing in the root is newer than SOURCE_DATE_EPOCH (files the rootfs
      // packages brought keep their older mtimes).
      ctx.progress('clamping mtimes to SOURCE_DATE_EPOCH');
      await run(['find', root, '-newermt', `@${sde}`, '-exec', 'touch', '-h', '-d', `@${sde}`, '{}', '+'], { log: ctx.log });
    }
    await markUpdated(ctx, root);
    // Writing /etc/.updated and /var/.updated (whose mtimes are /usr's, clamped) touched /etc and /var.
    if (sde !== undefined) await run(['touch', '-h', '-d', `@${sde}`, join(root, 'etc'), join(root, 'var')], { log: ctx.log });
  },
});

/**
 * `/usr/bin/aios` in the image: the running machine's verbs (src/cli/machine.ts: ps, top, runtime …,
 * bench), bundled beside aios-runtime (it reads the same proto/ dir), checked by running
 * `aios --help` with the image's own Node.js inside the root.
 */
async function installCli(ctx: BuildContext, root: string): Promise<void> {
  ctx.progress('bundling the aios command');
  await bundleCli(join(root, 'usr/lib/aios-runtime'));
  await installCliLauncher(root);
  if (existsSync(join(root, 'usr/bin/node'))) await run(['chroot', root, '/usr/bin/aios', '--help'], { log: ctx.log });
}

/** sha256 of the image's certificates and hashed API keys (what the overlay's cache key needs of them). */
async function credentialsDigest(pki: Pki): Promise<string> {
  return sha256(Buffer.concat(await Promise.all([pki.caCert, pki.serverCert, pki.httpKeys].map((f) => readFile(f)))));
}

/**
 * The runtime's access control in the root: the static group aios (the unix socket's group: its
 * members are local admins), and with runtime.tls the CA and server certificates under /etc/aios/tls
 * and the server's key and the hashed HTTP API keys under /etc/aios/credentials (root's, 0600; the
 * unit hands them to the service with LoadCredential=). The CA's key and the builder's client key
 * and API key never enter the image.
 */
async function installRuntimeAccess(ctx: BuildContext, root: string): Promise<void> {
  const hasGroup = (await readFile(join(root, 'etc/group'), 'utf8')).split('\n').some((l) => l.startsWith('aios:'));
  if (!hasGroup) await run(['chroot', root, 'groupadd', '--system', 'aios'], { log: ctx.log });
  const pki = ctx.pki;
  if (!pki) return;
  ctx.progress('installing the runtime\'s certificates and credentials');
  await mkdir(join(root, 'etc/aios/tls'), { recursive: true, mode: 0o755 });
  await mkdir(join(root, 'etc/aios/credentials'), { recursive: true, mode: 0o700 });
  await chmod(join(root, 'etc/aios/credentials'), 0o700);
  for (const [src, dest, mode] of [
    [pki.caCert, 'etc/aios/tls/ca.crt', 0o644],
    [pki.serverCert, 'etc/aios/tls/server.crt', 0o644],
    [pki.serverKey, 'etc/aios/credentials/server.key', 0o600],
    [pki.httpKeys, 'etc/aios/credentials/http-keys', 0o600],
  ] as const) {
    await copyFile(src, join(root, dest));
    await chmod(join(root, dest), mode);
    await chown(join(root, dest), 0, 0);
  }
}

/**
 * What systemd would otherwise do on the first boot because /usr is newer than /etc/.updated
 * (ConditionNeedsUpdate=: ldconfig.service, systemd-journal-catalog-update.service, …): done here, so
 * that sysinit.target does not wait for it on the machine (seconds on real hardware, more under
 * emulation, and every unit after basic.target waits with it).
 */
async function firstBootWorkAtBuild(ctx: BuildContext, root: string): Promise<void> {
  ctx.progress('rebuilding the linker cache and journal catalog');
  if (existsSync(join(root, 'usr/sbin/ldconfig')) || existsSync(join(root, 'sbin/ldconfig'))) {
    const aux = existsSync(join(root, 'var/cache/ldconfig'));
    await run(['chroot', root, 'ldconfig'], { log: ctx.log });
    // ldconfig's aux-cache records inode numbers and times: it would make two builds differ (and
    // is only a speed-up for the next run). Left as the rootfs had it.
    if (!aux) await rm(join(root, 'var/cache/ldconfig'), { recursive: true, force: true });
    else await rm(join(root, 'var/cache/ldconfig/aux-cache'), { force: true });
  }
  if (existsSync(join(root, 'usr/bin/journalctl'))) await run(['chroot', root, 'journalctl', '--update-catalog'], { log: ctx.log });
}

/**
 * /etc/.updated and /var/.updated written by systemd's own systemd-update-done (inside the root): /usr's
 * mtime, so that ConditionNeedsUpdate= finds nothing to do on the first boot. Last, after every other
 * change to the tree (a later change to /usr would make them stale).
 */
async function markUpdated(ctx: BuildContext, root: string): Promise<void> {
  if (existsSync(join(root, 'usr/lib/systemd/systemd-update-done'))) await run(['chroot', root, '/usr/lib/systemd/systemd-update-done'], { log: ctx.log });
}

/**
 * image.layout = "appliance" (docs/appliance.md): what a root that is never written needs. An empty
 * /etc/machine-id: systemd then makes a transient id each boot and mounts it over the file (an id
 * baked into the image would be the same on every machine; "uninitialized" would make every boot a
 * first boot). The rest comes from templates/root (fstab, repart.d).
 */
async function readonlyRootSetup(ctx: BuildContext, root: string): Promise<void> {
  ctx.progress('preparing the root for read-only use');
  await writeFile(join(root, 'etc/machine-id'), '');
  await rm(join(root, 'var/lib/dbus/machine-id'), { force: true });
  await updateSetup(ctx, root);
}

/**
 * The appliance's updates (docs/appliance.md): IMAGE_ID=aios and IMAGE_VERSION=<version> in
 * os-release (systemd-sysupdate's %A, the booted version its transfers never overwrite:
 * ProtectVersion=%A), and with a signing key its public key as /etc/systemd/import-pubring.gpg,
 * the only keyring systemd-pull then checks SHA256SUMS.gpg against (Verify=yes in the transfers).
 */
async function updateSetup(ctx: BuildContext, root: string): Promise<void> {
  const osRelease = join(root, 'usr/lib/os-release');
  const lines = (await readFile(osRelease, 'utf8')).split('\n').filter((l) => l && !/^IMAGE_(ID|VERSION)=/.test(l));
  await writeFile(osRelease, [...lines, 'IMAGE_ID=aios', `IMAGE_VERSION=${applianceVersion(ctx.recipe)}`, ''].join('\n'));
  const pubring = join(root, 'etc/systemd/import-pubring.gpg');
  await rm(pubring, { force: true });
  if (ctx.updateSigner) {
    await mkdir(join(root, 'etc/systemd'), { recursive: true });
    await writeFile(pubring, ctx.updateSigner.publicKey, { mode: 0o644 });
  }
}

/** The symbols of the recipe's kernel wishes (for /usr/lib/aios/kernel-wishes). */
async function wishSymbols(ctx: BuildContext): Promise<string[]> {
  return [...new Set((await kernelWishes(ctx)).results.map((w) => w.symbol))].sort();
}

/** Copies the llama.cpp binaries to /usr/bin and proves they run inside the target root. */
async function installLlama(ctx: BuildContext, llama: StageOutput, root: string, dir: string): Promise<void> {
  ctx.progress('installing llama.cpp binaries');
  for (const t of llamaBinaries(ctx.recipe.llama)) await run(['install', '-m', '0755', join(llama.dir, 'bin', t), join(root, 'usr/bin', t)], { log: ctx.log });
  // Every binary's shared libraries resolve in the root (a CUDA build: libcudart, libcublas, libcuda).
  for (const t of llamaBinaries(ctx.recipe.llama)) {
    const l = await run(['chroot', root, 'ldd', `/usr/bin/${t}`], { log: ctx.log, reject: false });
    const missing = l.stdout.split('\n').filter((x) => /not found/.test(x)).map((x) => x.trim().split(/\s+/)[0]);
    if (missing.length) throw new Error(`${t} needs ${missing.join(', ')}, which the image does not have (ldd in the target root)${ctx.recipe.llama.gpu === 'cuda' ? '; a CUDA build needs the driver and CUDA libraries: gpu.driver' : ''}`);
  }
  const check = await run(['chroot', root, '/usr/bin/llama-server', '--version'], { log: ctx.log, reject: false });
  if (check.exitCode !== 0) {
    throw new Error(`llama-server does not run inside the target root (exit ${check.exitCode}): ${check.all.slice(-400)}. The build host's toolchain must not be newer than the image's (glibc, libstdc++).`);
  }
  const info = JSON.parse(await readFile(join(llama.dir, 'llama.json'), 'utf8'));
  await writeFile(join(dir, 'llama.json'), JSON.stringify({ ...info, versionInTarget: versionLine(check.all) }, null, 2));
}

/**
 * What the image's bench entry point (/usr/libexec/aios/bench, from rootfs/) needs beside llama-bench:
 * the bandwidth probe, src/bench/triad.c compiled on this host as a static, stripped binary (the
 * image has no C compiler and no libgomp; static, it runs whatever the image's glibc; a second or
 * so of compiling, cached, instead of a rebuild of the llama stage), and /usr/lib/aios/llama.json:
 * how the image's llama.cpp was built (version, ISA level), for the benchmark's report. Only fields
 * that do not depend on the build's temporary paths, so the image stays reproducible.
 */
async function installBenchTools(ctx: BuildContext, llama: StageOutput, root: string): Promise<void> {
  ctx.progress('installing the benchmark\'s bandwidth probe');
  const triad = await triadStaticBinary(ctx.cacheDir);
  await run(['install', '-m', '0755', triad, join(root, 'usr/libexec/aios/triad')], { log: ctx.log });
  const info = JSON.parse(await readFile(join(llama.dir, 'llama.json'), 'utf8')) as { version?: string; isa?: { cpu?: string; march?: string; description?: string; flags?: string[] }; source?: { describe?: string; commit?: string; origin?: string } };
  const summary = {
    version: info.version,
    isa: info.isa ? { cpu: info.isa.cpu, march: info.isa.march, description: info.isa.description, flags: info.isa.flags } : undefined,
    source: info.source ? { describe: info.source.describe, commit: info.source.commit, origin: info.source.origin } : undefined,
    targets: ctx.recipe.llama.targets,
  };
  await mkdir(join(root, 'usr/lib/aios'), { recursive: true });
  await writeFile(join(root, 'usr/lib/aios/llama.json'), JSON.stringify(summary, null, 2) + '\n');
}

/** The tmpfiles.d file that links a model kept in the root (store = "image") into the models directory. */
export const MODEL_LINKS = 'usr/lib/tmpfiles.d/aios-models.conf';

/**
 * Models go to /var/lib/aios/models, or with store = "image" to /usr/lib/aios/models in the root and
 * a symlink to it in /var/lib/aios/models: made here (so a plain image and an appliance's first /var
 * have it) and by systemd-tmpfiles at every boot (MODEL_LINKS), so that a model a later appliance
 * version brings in its root appears in /var, which updates never replace. `L`, not `L+`: a file
 * already there under that name (a model made or pulled on the machine) is never removed.
 */
async function installModels(ctx: BuildContext, models: StageOutput, root: string, dir: string): Promise<void> {
  const list = JSON.parse(await readFile(join(models.dir, 'models.json'), 'utf8')) as InstalledModel[];
  const inImage = new Set(ctx.recipe.models.filter((m) => m.store === 'image').map((m) => m.name));
  const links: string[] = [];
  for (const m of list) {
    ctx.progress(`installing model ${m.name}${inImage.has(m.name) ? ' into the root (/usr/lib/aios/models)' : ''}`);
    const to = inImage.has(m.name) ? 'usr/lib/aios/models' : 'var/lib/aios/models';
    await mkdir(join(root, to), { recursive: true });
    for (const f of [m.file, ...(m.adapters ?? []).map((a) => a.file)]) {
      await run(['cp', '--reflink=auto', join(models.dir, 'models', f), join(root, to, f)], { log: ctx.log });
      if (!inImage.has(m.name)) continue;
      await symlink(`/usr/lib/aios/models/${f}`, join(root, 'var/lib/aios/models', f));
      links.push(`L /var/lib/aios/models/${f} - - - - /usr/lib/aios/models/${f}`);
    }
  }
  if (links.length) {
    await mkdir(join(root, dirname(MODEL_LINKS)), { recursive: true });
    const head = '# aios: models kept in the root (store = "image" in the recipe), linked into the models\n# directory at every boot; an existing file of the same name is left alone (L, not L+).\n';
    await writeFile(join(root, MODEL_LINKS), head + links.join('\n') + '\n');
  }
  await writeFile(join(dir, 'models.json'), JSON.stringify(list.map((m) => (inImage.has(m.name) ? { ...m, store: 'image' } : m)), null, 2));
}

/**
 * Replaces the stock kernel with the kernel stage's: purges the distribution's linux-image packages
 * (dpkg keeps a truthful package list), copies the kernel and modules in, then depmod and
 * update-initramfs inside the root. Those run in a private mount namespace with /proc, /sys and
 * /dev mounted for them: the mounts vanish with the namespace, even if the build is killed.
 */
async function installKernel(ctx: BuildContext, kernel: StageOutput, root: string, dir: string): Promise<void> {
  const info = JSON.parse(await readFile(join(kernel.dir, 'kernel.json'), 'utf8')) as { release: string };
  const packages = JSON.parse(await readFile(join(dir, 'packages.json'), 'utf8')) as Record<string, string>;
  const stock = Object.keys(packages).filter((p) => /^linux-image-/.test(p));
  ctx.progress(`replacing the stock kernel (${stock.join(', ') || 'none'}) with ${info.release}`);
  const script = [
    'set -e',
    'r="$1"; k="$2"',
    'mount -t proc proc "$r/proc"',
    'mount -t sysfs sys "$r/sys"',
    'mount --rbind /dev "$r/dev"',
    // First the purge (linux-image-* postrm hooks remove the stock initramfs; INITRD=No keeps them
    // from making one), then the custom kernel's files, so that nothing of it is purged.
    stock.length ? `DEBIAN_FRONTEND=noninteractive INITRD=No chroot "$r" dpkg --purge ${stock.join(' ')}` : 'true',
    'cp -a --no-preserve=ownership "$k/." "$r/"',
    `chroot "$r" depmod -a '${info.release}'`,
    `chroot "$r" update-initramfs -c -k '${info.release}'`,
  ].join('\n');
  await run(['unshare', '--mount', '--propagation', 'private', '--fork', 'sh', '-c', script, 'sh', root, join(kernel.dir, 'root')], { log: ctx.log });
  const list = ctx.distro.packageListCommand(root);
  await writeFile(join(dir, 'packages.json'), JSON.stringify(ctx.distro.parsePackageList((await run(list.argv, { log: ctx.log })).stdout), null, 1));
  const k = await ctx.distro.kernelFiles(root);
  if (k.version !== info.release) throw new Error(`after installing the custom kernel ${info.release}, the root's kernel is ${k.version}: the stock kernel was not removed`);
}
