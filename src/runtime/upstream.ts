/**
 * Talking to a child: POST over a new connection per request (loopback or its unix socket), for every front end.
 * There is no connection pool (below), so no stale pooled socket to retry: an error is the caller's to report.
 */
import { Agent, request as httpRequest, type IncomingMessage } from 'node:http';
import { StringDecoder } from 'node:string_decoder';

// No keep-alive: an idle pooled connection holds one of llama-server's HTTP threads until its own
// keep-alive timeout, and with 20 concurrent streams after a cancelled one, about 1 run in 4 of
// test/e2e/runtime-http.test.ts lost a stream to "socket hang up" (0 in 8 without the pool). A new
// connection on loopback or the child's unix socket costs well under a millisecond.
const agent = new Agent({ keepAlive: false, maxSockets: 1024 });

/** Where a child listens: its loopback port, or the path of its unix socket (a sandboxed child has no network). */
export type ChildAddress = number | string;

const target = (to: ChildAddress) => (typeof to === 'string' ? { socketPath: to } : { host: '127.0.0.1', port: to });

export function postChild(to: ChildAddress, path: string, payload: Buffer, signal: AbortSignal): Promise<IncomingMessage> {
  return new Promise<IncomingMessage>((resolve, reject) => {
    const r = httpRequest(
      { ...target(to), path, method: 'POST', agent, signal, headers: { 'content-type': 'application/json', 'content-length': payload.length } },
      resolve,
    );
    r.on('socket', (s) => s.setNoDelay(true));
    r.on('error', reject);
    r.end(payload);
  });
}

export async function readAll(s: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s as AsyncIterable<Buffer>) parts.push(c);
  return Buffer.concat(parts);
}

/** The `data:` payloads of a server-sent event stream, as they arrive. */
export async function* sseData(s: IncomingMessage): AsyncGenerator<string> {
  let buf = '';
  const utf8 = new StringDecoder('utf8'); // a character split across two chunks stays whole
  for await (const chunk of s as AsyncIterable<Buffer>) {
    buf += utf8.write(chunk);
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line.startsWith('data:')) yield line.slice(5).trim();
    }
  }
}

/** GET a child's path (its /health): the status code, 0 when it did not answer within `timeoutMs`. */
export function getChildStatus(to: ChildAddress, path: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve) => {
    const r = httpRequest({ ...target(to), path, method: 'GET', agent, timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    r.on('timeout', () => r.destroy(new Error('timeout')));
    r.on('error', () => resolve(0));
    r.end();
  });
}

/** GET a child's path with its body (its /metrics); status 0 when it did not answer within `timeoutMs`. */
export function getChild(to: ChildAddress, path: string, timeoutMs: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const r = httpRequest({ ...target(to), path, method: 'GET', agent, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', () => resolve({ status: 0, body: '' }));
    });
    r.on('timeout', () => r.destroy(new Error('timeout')));
    r.on('error', () => resolve({ status: 0, body: '' }));
    r.end();
  });
}
