import { describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { loadRecipe } from '../../src/config/load.js';
import { identity, templateContext } from '../../src/build/context.js';
import { renderTree } from '../../src/build/render.js';
import { paths } from '../../src/util/paths.js';
import { REPO } from '../helpers.js';
import { parse as parseToml } from 'smol-toml';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';

const GOLDEN = join(REPO, 'test/golden');
const update = process.env.UPDATE_GOLDEN === '1';
const kernel = { version: '6.12.0-test-amd64', kernel: 'boot/vmlinuz', initrd: 'boot/initrd.img' };

function listFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

/** Renders each templates/ tree for a recipe and compares with test/golden/<case>/<tree>/ (UPDATE_GOLDEN=1 rewrites). */
async function golden(caseName: string, sets: string[], distroRecipe = 'default') {
  const r = await loadRecipe(distroRecipe, { sets });
  const ctx = templateContext(r, identity(r), { kernel });
  for (const tree of ['bootstrap', 'root', 'esp']) {
    const files = await renderTree(join(paths.templates, tree), ctx);
    const dir = join(GOLDEN, caseName, tree);
    if (update) {
      rmSync(dir, { recursive: true, force: true });
      for (const f of files) {
        mkdirSync(dirname(join(dir, f.path)), { recursive: true });
        writeFileSync(join(dir, f.path), f.content);
      }
    }
    expect(files.map((f) => f.path).sort(), `${caseName}/${tree}: file list`).toEqual(listFiles(dir));
    for (const f of files) expect(f.content, `${caseName}/${tree}/${f.path}`).toBe(readFileSync(join(dir, f.path), 'utf8'));
  }
}

describe('the strategic layer in the image (recipe [api])', () => {
  const sets = ['api.claude={provider="anthropic", model="claude-sonnet-4-5-20250929", monthly_budget_usd=100.0, rate_limit_rpm=50}', 'api.openai={provider="openai", model="gpt-4o", key_file="openai-key", monthly_budget_usd=50.0, fallback_only=true}', 'api.local={provider="openai", model="m", base_url="http://10.0.0.2:8080/v1", key_file="/etc/aios/remote.key", monthly_budget_usd=0}'];
  it('copies [api] into config.toml (valid for the runtime) and imports each provider\'s credential in the unit', async () => {
    const r = await loadRecipe('default', { sets });
    const files = await renderTree(join(paths.templates, 'root'), templateContext(r, identity(r), { kernel }));
    const cfg = files.find((f) => f.path === 'etc/aios/config.toml')!.content;
    const parsed = RuntimeConfigSchema.parse(parseToml(cfg));
    expect(Object.keys(parsed.api)).toEqual(['local_fallback', 'ledger_dir', 'claude', 'openai', 'local'].filter((k) => k in parsed.api));
    expect(parsed.api.claude).toMatchObject({ provider: 'anthropic', monthly_budget_usd: 100, rate_limit_rpm: 50, key_file: '' });
    expect(parsed.api.openai).toMatchObject({ fallback_only: true, key_file: 'openai-key' });
    const unit = files.find((f) => f.path === 'usr/lib/systemd/system/aios-runtime.service')!.content;
    // key_file "" = a credential named like the table; an absolute path is read directly, not imported.
    expect(unit.match(/^ImportCredential=.*$/gm)).toEqual(['ImportCredential=claude', 'ImportCredential=openai-key']);
  });
  it('refuses a key in the recipe, and [api] without the runtime (exit 2, naming the key)', async () => {
    const e = await loadRecipe('default', { sets: ['api.claude={provider="anthropic", model="m", monthly_budget_usd=1, api_key="sk-ant-123"}'] }).catch((x) => x);
    expect(e.exitCode).toBe(2);
    expect(e.problems).toEqual([{ path: 'api.claude.api_key', message: expect.stringMatching(/a key never goes into the config/) }]);
    const f = await loadRecipe('default', { sets: ['runtime.enabled=false', ...sets.slice(0, 1)] }).catch((x) => x);
    expect(f.problems.map((p: { path: string }) => p.path)).toEqual(['api']);
    const g = await loadRecipe('default', { sets: ['api.x={provider="gemini", model="m", monthly_budget_usd=-1}'] }).catch((x) => x);
    expect(g.problems.map((p: { path: string }) => p.path).sort()).toEqual(['api.x.monthly_budget_usd', 'api.x.provider']);
  });
});

describe('templates (golden files)', () => {
  it('default recipe', () => golden('default', []));
  it('xfs root, no zram, no network, no autologin, mitigations off', () =>
    golden('variant', ['filesystem.root=xfs', 'zram.enabled=false', 'system.network=none', 'system.autologin=false', 'tuning.mitigations=false', 'boot.timeout=3']));
  it('arch base', () => golden('arch', ['base.distro=arch', 'base.suite="rolling"']));

  it('writes the tuning the seeds ask for', async () => {
    const r = await loadRecipe('default');
    const ctx = templateContext(r, identity(r), { kernel });
    const files = Object.fromEntries((await renderTree(join(paths.templates, 'root'), ctx)).map((f) => [f.path, f.content]));
    expect(files['etc/systemd/zram-generator.conf']).toMatch(/zram-size = ram\ncompression-algorithm = zstd/);
    expect(files['etc/systemd/journald.conf.d/90-aios.conf']).toMatch(/Storage=volatile\nSystemMaxUse=50M\nRuntimeMaxUse=50M/);
    expect(files['etc/fstab']).toMatch(/\text4\tnoatime,commit=60\t/);
    const esp = Object.fromEntries((await renderTree(join(paths.templates, 'esp'), ctx)).map((f) => [f.path, f.content]));
    expect(esp['loader/loader.conf']).toMatch(/^timeout 0$/m);
    expect(esp['loader/entries/aios.conf']).toMatch(/^options root=PARTUUID=\S+ rootfstype=ext4 rw .*transparent_hugepage=madvise preempt=voluntary nowatchdog nmi_watchdog=0$/m);
  });

  it('renders an /etc/aios/config.toml that the runtime schema accepts', async () => {
    const r = await loadRecipe('default');
    const files = await renderTree(join(paths.templates, 'root'), templateContext(r, identity(r)));
    const cfg = files.find((f) => f.path === 'etc/aios/config.toml')!;
    const parsed = RuntimeConfigSchema.parse(parseToml(cfg.content));
    expect(parsed.system.hostname).toBe('aios');
    expect(parsed.models.model_dir).toBe('/var/lib/aios/models');
  });

  it("lists a model's LoRA adapters ([[models.adapters]]) as the runtime's [[models.<layer>.adapters]], valid for its schema", async () => {
    const r = await loadRecipe('default');
    const op = r.models.find((m) => m.level === 'operational')!;
    const plain = (await renderTree(join(paths.templates, 'root'), templateContext(r, identity(r)))).find((f) => f.path === 'etc/aios/config.toml')!.content;
    expect(plain).not.toMatch(/adapters/);
    op.adapters = [
      { name: 'sql', source: 'synth', description: 'writes "SQL"', scale: 0.5, rank: 8, seed: 1, zero_b: false },
      { name: 'legal', source: 'file', path: '/x/legal.gguf', description: '', scale: 1 },
    ];
    const cfg = (await renderTree(join(paths.templates, 'root'), templateContext(r, identity(r)))).find((f) => f.path === 'etc/aios/config.toml')!.content;
    const parsed = RuntimeConfigSchema.parse(parseToml(cfg));
    expect(parsed.models.operational!.adapters).toEqual([
      { name: 'sql', file: `${op.name}.lora-sql.gguf`, description: 'writes "SQL"', scale: 0.5 },
      { name: 'legal', file: `${op.name}.lora-legal.gguf`, description: '', scale: 1 },
    ]);
    expect(parsed.models.operational!.always_loaded).toBe(true);
  });

  it('runtime.install_models: the model dir writable to the service (group aios, 2775 by tmpfiles); read-only by default', async () => {
    const r = await loadRecipe('default');
    const render = async () => Object.fromEntries((await renderTree(join(paths.templates, 'root'), templateContext(r, identity(r)))).map((f) => [f.path, f.content]));
    const unit = 'usr/lib/systemd/system/aios-runtime.service';
    const tmpfiles = 'usr/lib/tmpfiles.d/aios-model-installs.conf';
    const plain = await render();
    expect(plain[unit]).toMatch(/^ReadOnlyPaths=\/var\/lib\/aios\/models$/m);
    expect(plain[unit]).not.toMatch(/^ReadWritePaths=\/var\/lib\/aios\/models$/m);
    expect(plain[tmpfiles]).toBeUndefined();
    r.runtime.install_models = true;
    const open = await render();
    expect(open[unit]).toMatch(/^ReadWritePaths=\/var\/lib\/aios\/models$/m);
    expect(open[unit]).not.toMatch(/^ReadOnlyPaths=/m);
    expect(open[tmpfiles]).toMatch(/^d \/var\/lib\/aios\/models 2775 root aios -$/m);
  });

  it('fails with the template name when a template refers to a missing value', async () => {
    const dir = join(GOLDEN, '..', 'fixtures', 'bad-templates');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'x.conf.hbs'), '{{no.such.key}}\n');
    await expect(renderTree(dir, {})).rejects.toThrow(/template x\.conf\.hbs/);
  });
});

describe('aios-runtime.service sandboxing', () => {
  it('scores an exposure of 2.0 or less with systemd-analyze security (the seed\'s ollama.service scores 9.2)', async () => {
    const { execa } = await import('execa');
    const { tmp } = await import('../helpers.js');
    const r = await loadRecipe('default');
    const files = await renderTree(join(paths.templates, 'root'), templateContext(r, identity(r)));
    const unit = files.find((f) => f.path === 'usr/lib/systemd/system/aios-runtime.service')!;
    const d = tmp();
    writeFileSync(join(d, 'aios-runtime.service'), unit.content);
    const out = await execa('systemd-analyze', ['security', '--offline=true', join(d, 'aios-runtime.service')], { reject: false });
    const m = /Overall exposure level for aios-runtime\.service: (\d+\.\d+)/.exec(out.stdout);
    expect(m, out.stdout + out.stderr).not.toBeNull();
    expect(Number(m![1])).toBeLessThanOrEqual(2.0);
    expect(unit.content).toMatch(/^Type=notify$/m);
    expect(unit.content).toMatch(/^ReadOnlyPaths=\/var\/lib\/aios\/models$/m);
    // The model sandbox (docs/sandbox.md) without widening the unit beyond what it needs: the
    // three namespaces unshare makes, Landlock and seccomp for setpriv; DynamicUser= and so
    // RestrictSUIDSGID= kept; no mount calls, no mount namespace, no netlink.
    expect(unit.content).toMatch(/^RestrictNamespaces=user net pid$/m);
    expect(unit.content).toMatch(/^SystemCallFilter=landlock_create_ruleset landlock_add_rule landlock_restrict_self seccomp capset$/m);
    expect(unit.content).toMatch(/^DynamicUser=yes$/m);
    expect(unit.content).toMatch(/^RestrictSUIDSGID=yes$/m);
    expect(unit.content).toMatch(/^RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6$/m);
    expect(unit.content).toMatch(/^SystemCallFilter=~@privileged @resources @mount /m);
    console.log(`aios-runtime.service: exposure ${m![1]} (systemd-analyze security --offline, this host's systemd)`);
  });
});
