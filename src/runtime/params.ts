/**
 * Generation parameters: one validation and one set of defaults for every front end (gRPC and
 * HTTP send their fields here by their wire names). A value that is wrong is refused naming the
 * field (INVALID_ARGUMENT / HTTP 400); a token count above the model's ceiling is refused, not
 * clamped, so a client never gets a silently shorter answer than it asked for.
 */
import { Code, RuntimeError } from './errors.js';

/** What a model falls back to and allows (from its configured layer). */
export interface GenerationDefaults {
  maxTokens: number;
  temperature: number;
  /** Largest max_tokens a request may ask for. */
  maxTokensLimit: number;
  /** Where the limit comes from, for the error message. */
  limitSource: string;
}

interface Rule {
  int?: boolean;
  min?: number;
  max?: number;
  /** A number of tokens to generate: also checked against the model's ceiling. */
  tokens?: boolean;
}

/** Every numeric sampling field the runtime checks, by its wire name (OpenAI's and llama.cpp's). */
export const PARAM_RULES: Readonly<Record<string, Rule>> = {
  max_tokens: { int: true, min: 1, tokens: true },
  max_completion_tokens: { int: true, min: 1, tokens: true },
  n_predict: { int: true, min: 1, tokens: true },
  temperature: { min: 0, max: 2 },
  top_p: { min: 0, max: 1 },
  min_p: { min: 0, max: 1 },
  typical_p: { min: 0, max: 1 },
  top_k: { int: true, min: 0 },
  presence_penalty: { min: -2, max: 2 },
  frequency_penalty: { min: -2, max: 2 },
  repeat_penalty: { min: 0 },
  seed: { int: true },
  // llama-server answers with one choice.
  n: { int: true, min: 1, max: 1 },
};

const describe = (r: Rule) =>
  `${r.int ? 'an integer' : 'a number'}${r.min !== undefined && r.max !== undefined ? ` from ${r.min} to ${r.max}` : r.min === 1 && r.int ? ' of at least 1' : r.min !== undefined ? ` of at least ${r.min}` : ''}`;

/**
 * Checks the fields present in `fields` (undefined and null = absent). Throws INVALID_ARGUMENT
 * naming the first wrong field, what it must be, and what it was.
 */
export function checkParams(fields: Record<string, unknown>, d: GenerationDefaults): void {
  for (const [name, rule] of Object.entries(PARAM_RULES)) {
    const v = fields[name];
    if (v === undefined || v === null) continue;
    const shown = typeof v === 'string' ? `"${v}"` : String(v);
    if (typeof v !== 'number' || !Number.isFinite(v) || (rule.int && !Number.isInteger(v)) || (rule.min !== undefined && v < rule.min) || (rule.max !== undefined && v > rule.max)) {
      throw new RuntimeError(Code.INVALID_ARGUMENT, `${name}: must be ${describe(rule)} (got ${shown})`);
    }
    if (rule.tokens && v > d.maxTokensLimit) {
      throw new RuntimeError(Code.INVALID_ARGUMENT, `${name}: ${v} is more than this model allows (${d.maxTokensLimit}, ${d.limitSource})`);
    }
  }
}

/** The tokens to generate and the temperature a request gets: its own when given, else the model's. */
export function resolveParams(fields: Record<string, unknown>, d: GenerationDefaults): { maxTokens: number; temperature: number } {
  checkParams(fields, d);
  const given = (['max_tokens', 'max_completion_tokens', 'n_predict'] as const).map((k) => fields[k]).find((v) => typeof v === 'number') as number | undefined;
  const t = fields.temperature;
  return { maxTokens: given ?? Math.min(d.maxTokens, d.maxTokensLimit), temperature: typeof t === 'number' ? t : d.temperature };
}
