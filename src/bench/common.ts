/**
 * What the runtime benchmarks (`npm run bench`, `bench:sessions`, `bench:fleet`: runtime.ts,
 * sessions.ts, fleet.ts) share: reading a streamed OpenAI chat completion, and replacing their own
 * section of docs/benchmarks.md.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';

/** What one streamed chat completion delivered, as the client saw it. */
export interface StreamedChat {
  /** performance.now() when the first content arrived (0 = none did). */
  first: number;
  /** performance.now() when the last content arrived. */
  last: number;
  /** Chunks with content (llama-server sends one token per chunk). */
  tokens: number;
  /** Decode rate seen by the client: tokens after the first / time after the first (0 below two tokens). */
  tps: number;
  /** llama-server's own decode rate for the request (timings.predicted_per_second), when it reports it. */
  serverTps?: number;
}

/**
 * Reads an OpenAI chat completion's server-sent events (`data: {…}` lines, `data: [DONE]`) to the
 * end: when content arrived and how much, and llama-server's own rate. `now` is the clock.
 */
export async function readChatStream(body: AsyncIterable<Uint8Array>, now: () => number = () => performance.now()): Promise<StreamedChat> {
  let first = 0;
  let last = 0;
  let n = 0;
  let serverTps: number | undefined;
  let buf = '';
  const dec = new TextDecoder();
  for await (const chunk of body) {
    buf += dec.decode(chunk, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (!line.startsWith('data:') || line === 'data: [DONE]') continue;
      const j = JSON.parse(line.slice(5)) as { choices?: { delta?: { content?: string } }[]; timings?: { predicted_per_second?: number } };
      if (j.choices?.[0]?.delta?.content) {
        const t = now();
        if (!first) first = t;
        last = t;
        n++;
      }
      if (j.timings?.predicted_per_second) serverTps = j.timings.predicted_per_second;
    }
  }
  return { first, last, tokens: n, tps: n > 1 ? ((n - 1) * 1000) / (last - first) : 0, serverTps };
}

/**
 * Puts `section` (which begins with `start` and ends with `end`, the benchmark's markers) into the
 * Markdown file `out` in place of the one between the same markers, or appends it when there is none
 * (a new file begins with "# Benchmarks"); the rest of the file stays. Prints the section too.
 */
export function writeBenchSection(out: string, start: string, end: string, section: string): void {
  const doc = existsSync(out) ? readFileSync(out, 'utf8') : '# Benchmarks\n';
  const i = doc.indexOf(start);
  const j = doc.indexOf(end);
  writeFileSync(out, i >= 0 && j > i ? doc.slice(0, i) + section + doc.slice(j + end.length) : `${doc.trimEnd()}\n\n${section}\n`);
  process.stdout.write(section + '\n');
}

/** Runs a benchmark's main(): on failure its stack goes to stderr and the process exits 1. */
export function runBench(main: () => Promise<void>): void {
  main().catch((e) => {
    process.stderr.write(`bench: ${(e as Error).stack ?? e}\n`);
    process.exit(1);
  });
}
