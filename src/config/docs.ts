/** The recipe reference, generated from the zod schema (docs/recipe.md is its output). */
import { z } from 'zod';
import { RecipeSchema } from './schema.js';

type JS = { oneOf?: JS[]; type?: string | string[]; description?: string; default?: unknown; enum?: unknown[]; properties?: Record<string, JS>; items?: JS; anyOf?: JS[]; pattern?: string; additionalProperties?: JS | boolean; const?: unknown };

function typeOf(s: JS): string {
  if (s.enum) return s.enum.map((e) => JSON.stringify(e)).join(' \\| ');
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.anyOf) return s.anyOf.map(typeOf).join(' \\| ');
  if (s.type === 'array') return `array of ${s.items ? typeOf(s.items) : 'any'}`;
  if (s.type === 'object' && s.additionalProperties && typeof s.additionalProperties === 'object') return `table of ${typeOf(s.additionalProperties)}`;
  return Array.isArray(s.type) ? s.type.join(' \\| ') : (s.type ?? 'any');
}

export function recipeReference(): string {
  const schema = z.toJSONSchema(RecipeSchema, { io: 'input', unrepresentable: 'any' }) as JS;
  const lines = [
    '# Recipe reference',
    '',
    'Generated from `src/config/schema.ts` by `aios docs recipe`; do not edit by hand.',
    'Recipes are TOML files in `images/`. Unknown keys are errors. `aios summary` prints a resolved recipe.',
    '',
  ];
  const top: [string, JS][] = [];
  for (const [k, v] of Object.entries(schema.properties ?? {})) {
    if (v.properties) {
      lines.push(`## [${k}]`, '', v.description ?? '', '', '| key | type | default | description |', '| --- | --- | --- | --- |');
      for (const [kk, vv] of Object.entries(v.properties)) {
        lines.push(`| \`${k}.${kk}\` | ${typeOf(vv)} | ${vv.default === undefined ? '' : `\`${JSON.stringify(vv.default)}\``} | ${(vv.description ?? '').replace(/\|/g, '\\|')} |`);
      }
      lines.push('');
    } else if (v.type === 'array' && (v.items?.oneOf || v.items?.anyOf)) {
      lines.push(`## [[${k}]]`, '', v.description ?? '', '');
      for (const variant of v.items.oneOf ?? v.items.anyOf ?? []) {
        const disc = Object.entries(variant.properties ?? {}).find(([, p]) => p.const !== undefined);
        lines.push(`### ${disc ? `${disc[0]} = ${JSON.stringify(disc[1].const)}` : 'variant'}`, '', '| key | type | default | description |', '| --- | --- | --- | --- |');
        for (const [kk, vv] of Object.entries(variant.properties ?? {})) {
          lines.push(`| \`${kk}\` | ${typeOf(vv)} | ${vv.default === undefined ? '' : `\`${JSON.stringify(vv.default)}\``} | ${(vv.description ?? '').replace(/\|/g, '\\|')} |`);
        }
        lines.push('');
      }
    } else top.push([k, v]);
  }
  const head = ['## Top-level keys', '', '| key | type | default | description |', '| --- | --- | --- | --- |'];
  for (const [k, v] of top) head.push(`| \`${k}\` | ${typeOf(v)} | ${v.default === undefined ? '' : `\`${JSON.stringify(v.default)}\``} | ${v.description ?? ''} |`);
  lines.splice(5, 0, ...head, '');
  return lines.join('\n');
}
