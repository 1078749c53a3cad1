/**
 * A fake llama-server for unit tests of the runtime: no process, an in-process HTTP server on the
 * port the supervisor picked, answering /health and /v1/chat/completions the way llama-server does,
 * with behaviour a test can change (slow answers, failing health, crashes, failing starts).
 */
import { createServer, type Server } from 'node:http';
import type { Launcher, LaunchProfile, ProcessHandle } from '../src/runtime/child.js';
import { freePort } from '../src/util/net.js';

export interface FakeBehaviour {
  /** /health answers 200 (else 503). */
  healthy: boolean;
  /** The process exits at once when started (like a file llama-server refuses). */
  exitOnStart: boolean;
  /** Milliseconds before a completion is answered. */
  answerDelayMs: number;
  /** /health polls answered 503 after a start before it turns healthy. */
  loadingPolls: number;
  /** A streamed answer: this many pieces (one token each), `pieceDelayMs` apart (default 1, at once). */
  streamPieces?: number;
  pieceDelayMs?: number;
}

export class FakeProcess implements ProcessHandle {
  private static next = 1000;
  readonly pid = FakeProcess.next++;
  readonly buffers = { byName: {}, hostBytes: 64 * 1024 * 1024, deviceBytes: 0 };
  readonly exited: Promise<{ code: number | null; signal: string | null }>;
  private done!: (e: { code: number | null; signal: string | null }) => void;
  alive = true;
  server?: Server;
  constructor() {
    this.exited = new Promise((r) => (this.done = r));
  }
  tail(): string {
    return 'fake llama-server: last line';
  }
  kill(signal: 'SIGTERM' | 'SIGKILL'): void {
    this.exit(null, signal);
  }
  /** Ends the process (a crash when nobody asked it to). */
  exit(code: number | null, signal: string | null = null): void {
    if (!this.alive) return;
    this.alive = false;
    this.server?.closeAllConnections();
    this.server?.close();
    setImmediate(() => this.done({ code, signal }));
  }
}

export class FakeLauncher implements Launcher {
  readonly procs: FakeProcess[] = [];
  /** Bodies of the completion requests the children received. */
  readonly bodies: Record<string, unknown>[] = [];
  b: FakeBehaviour = { healthy: true, exitOnStart: false, answerDelayMs: 0, loadingPolls: 0 };
  private polls = new Map<number, number>();

  /** The launch profiles started, in order. */
  readonly profiles: LaunchProfile[] = [];

  async start(profile: LaunchProfile): Promise<{ port: number; proc: ProcessHandle }> {
    this.profiles.push(profile);
    const port = await freePort();
    return { port, proc: this.launch(profile, port) };
  }

  private launch(profile: LaunchProfile, port: number): ProcessHandle {
    const p = new FakeProcess();
    this.procs.push(p);
    this.polls.set(port, 0);
    if (this.b.exitOnStart) {
      p.exit(1);
      return p;
    }
    p.server = createServer((req, res) => {
      if (req.url === '/health') {
        const n = (this.polls.get(port) ?? 0) + 1;
        this.polls.set(port, n);
        res.writeHead(this.b.healthy && n > this.b.loadingPolls ? 200 : 503).end('{}');
        return;
      }
      if (req.url === '/metrics') {
        // llama-server's Prometheus text (a scrape of the runtime's /metrics reads it).
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end('# HELP llamacpp:requests_processing Number of requests processing.\n# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 0\n');
        return;
      }
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        const j = JSON.parse(body) as Record<string, unknown>;
        this.bodies.push(j);
        const t = setTimeout(() => {
          const text = 'OK';
          if (j.stream) {
            res.writeHead(200, { 'content-type': 'text/event-stream' });
            const pieces = this.b.streamPieces ?? 1;
            let sent = 0;
            const piece = () => {
              if (res.destroyed) return;
              res.write(`data: ${JSON.stringify({ model: profile.name, choices: [{ delta: { content: text } }] })}\n\n`);
              if (++sent < pieces) return void setTimeout(piece, this.b.pieceDelayMs ?? 0);
              res.end(`data: ${JSON.stringify({ model: profile.name, choices: [], usage: { prompt_tokens: 3, completion_tokens: pieces } })}\n\ndata: [DONE]\n\n`);
            };
            piece();
          } else {
            res.writeHead(200, { 'content-type': 'application/json' });
            res.end(JSON.stringify({ model: profile.name, choices: [{ message: { content: text } }], usage: { prompt_tokens: 3, completion_tokens: 1 } }));
          }
        }, this.b.answerDelayMs);
        res.on('close', () => clearTimeout(t));
      });
    });
    p.server.listen(port, '127.0.0.1');
    return p;
  }

  async healthy(port: number): Promise<boolean> {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(1000) });
      return r.status === 200;
    } catch {
      return false;
    }
  }

  measure(): number {
    return 100 * 1024 * 1024;
  }

  /** The newest process. */
  get last(): FakeProcess {
    return this.procs[this.procs.length - 1]!;
  }
}
