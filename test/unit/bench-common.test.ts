/** src/bench/common.ts: the runtime benchmarks' stream reader and their docs/benchmarks.md section writer. */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readChatStream, writeBenchSection } from '../../src/bench/common.js';
import { tmp } from '../helpers.js';

/** The bytes of `text` in pieces cut at `cuts` (byte offsets), as a response body delivers them. */
async function* pieces(text: string, cuts: number[]): AsyncIterable<Uint8Array> {
  const b = Buffer.from(text);
  let at = 0;
  for (const c of [...cuts, b.length]) {
    yield new Uint8Array(b.subarray(at, c));
    at = c;
  }
}

const event = (o: object) => `data: ${JSON.stringify(o)}\n\n`;

describe('readChatStream', () => {
  it('counts content chunks across split reads, times the first and last, and keeps llama-server\'s own rate', async () => {
    const text = [
      event({ choices: [{ delta: { role: 'assistant' } }] }),
      event({ choices: [{ delta: { content: 'Ünï' } }] }),
      ': a comment line\n',
      event({ choices: [{ delta: { content: 'b' } }] }),
      event({ choices: [{ delta: { content: '' } }] }),
      event({ choices: [{ delta: { content: 'c' } }] }),
      event({ choices: [], timings: { predicted_per_second: 41.5 } }),
      'data: [DONE]\n\n',
    ].join('');
    // Cut inside a JSON line and inside the two-byte "Ü".
    const cut = text.indexOf('Ünï') + 1;
    let clock = 1000;
    const r = await readChatStream(pieces(text, [10, cut, cut + 1, cut + 40]), () => (clock += 100));
    expect(r).toEqual({ first: 1100, last: 1300, tokens: 3, tps: 10, serverTps: 41.5 });
  });

  it('no content: no rate; one token: no rate either; no timings: serverTps undefined', async () => {
    expect(await readChatStream(pieces('data: [DONE]\n\n', []))).toEqual({ first: 0, last: 0, tokens: 0, tps: 0, serverTps: undefined });
    const one = await readChatStream(pieces(event({ choices: [{ delta: { content: 'a' } }] }), []), () => 5);
    expect(one).toEqual({ first: 5, last: 5, tokens: 1, tps: 0, serverTps: undefined });
  });
});

describe('writeBenchSection', () => {
  const S = '<!-- x-bench:start -->';
  const E = '<!-- x-bench:end -->';

  it('replaces only its own section, appends when there is none, and starts a new file', () => {
    const d = tmp();
    const file = join(d, 'benchmarks.md');
    writeBenchSection(file, S, E, `${S}\nfirst\n${E}`);
    expect(readFileSync(file, 'utf8')).toBe(`# Benchmarks\n\n${S}\nfirst\n${E}\n`);
    writeFileSync(file, `# Benchmarks\n\nbefore\n\n${S}\nold\n${E}\n\nafter <!-- y-bench:start -->\n`);
    writeBenchSection(file, S, E, `${S}\nnew\n${E}`);
    expect(readFileSync(file, 'utf8')).toBe(`# Benchmarks\n\nbefore\n\n${S}\nnew\n${E}\n\nafter <!-- y-bench:start -->\n`);
    writeFileSync(file, '# Benchmarks\n\nother\n\n\n');
    writeBenchSection(file, S, E, `${S}\nadded\n${E}`);
    expect(readFileSync(file, 'utf8')).toBe(`# Benchmarks\n\nother\n\n${S}\nadded\n${E}\n`);
  });
});
