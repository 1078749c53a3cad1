/**
 * Cloud model prices in USD per million tokens, by kind (the providers' public list prices when
 * this table was written). A [api.<name>] table overrides any of them with price_*_per_mtok; a model
 * that is neither here nor priced in the config is refused at start (spend that cannot be counted
 * could not be budgeted). Matched by the longest prefix of the model name (dated snapshots included).
 */
export interface Prices {
  input: number;
  output: number;
  /** Input read from the provider's prompt cache (Anthropic cache_read_input_tokens, OpenAI cached_tokens). */
  cacheRead: number;
  /** Input written to the prompt cache (Anthropic cache_creation_input_tokens). */
  cacheWrite: number;
  /** Reasoning tokens (OpenAI completion_tokens_details.reasoning_tokens; billed as output by OpenAI). */
  reasoning: number;
}

const anthropic = (input: number, output: number): Prices => ({ input, output, cacheRead: input / 10, cacheWrite: input * 1.25, reasoning: output });
const openai = (input: number, output: number, cacheRead: number): Prices => ({ input, output, cacheRead, cacheWrite: input, reasoning: output });

export const PRICE_TABLE: Record<string, Prices> = {
  'claude-opus-4-5': anthropic(5, 25),
  'claude-opus-4-1': anthropic(15, 75),
  'claude-opus-4': anthropic(15, 75),
  'claude-sonnet-4-5': anthropic(3, 15),
  'claude-sonnet-4': anthropic(3, 15),
  'claude-3-7-sonnet': anthropic(3, 15),
  'claude-3-5-sonnet': anthropic(3, 15),
  'claude-haiku-4-5': anthropic(1, 5),
  'claude-3-5-haiku': anthropic(0.8, 4),
  'gpt-4o-mini': openai(0.15, 0.6, 0.075),
  'gpt-4o': openai(2.5, 10, 1.25),
  'gpt-4.1-nano': openai(0.1, 0.4, 0.025),
  'gpt-4.1-mini': openai(0.4, 1.6, 0.1),
  'gpt-4.1': openai(2, 8, 0.5),
  'gpt-5-nano': openai(0.05, 0.4, 0.005),
  'gpt-5-mini': openai(0.25, 2, 0.025),
  'gpt-5': openai(1.25, 10, 0.125),
  'o4-mini': openai(1.1, 4.4, 0.275),
  'o3-mini': openai(1.1, 4.4, 0.55),
  o3: openai(2, 8, 0.5),
};

/** The table's prices for a model (longest matching prefix), or undefined. */
export function tablePrices(model: string): Prices | undefined {
  const key = Object.keys(PRICE_TABLE)
    .filter((k) => model === k || model.startsWith(k + '-') || model.startsWith(k + '@'))
    .sort((a, b) => b.length - a.length)[0];
  return key ? PRICE_TABLE[key] : undefined;
}

/** Tokens of one answer, by how they are priced. `input` excludes cached input. */
export interface Tokens {
  input: number;
  output: number;
  cacheRead: number;
  cacheWrite: number;
  reasoning: number;
}

export const ZERO_TOKENS: Tokens = { input: 0, output: 0, cacheRead: 0, cacheWrite: 0, reasoning: 0 };

/** USD for these tokens at these prices. */
export function costOf(t: Tokens, p: Prices): number {
  return (t.input * p.input + t.output * p.output + t.cacheRead * p.cacheRead + t.cacheWrite * p.cacheWrite + t.reasoning * p.reasoning) / 1e6;
}

/**
 * The most a request can cost before it is sent: every prompt token at the dearest input rate
 * (a cache write costs more than plain input) and max_tokens at the dearest output rate.
 */
export function worstCase(promptTokens: number, maxTokens: number, p: Prices): number {
  return (promptTokens * Math.max(p.input, p.cacheWrite, p.cacheRead) + maxTokens * Math.max(p.output, p.reasoning)) / 1e6;
}

/**
 * A safe over-estimate of a prompt's tokens without the provider's tokenizer: every token of a
 * byte-level BPE is at least one byte of UTF-8, plus a few tokens of framing per message.
 */
export function promptTokenBound(messages: { content: string }[]): number {
  return messages.reduce((n, m) => n + Buffer.byteLength(m.content, 'utf8') + 8, 16);
}
