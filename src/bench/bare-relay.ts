/**
 * The floor under aios-runtime's relay, for `npm run bench`: the least a Node.js process can do to
 * pass a streamed OpenAI answer through — read the request, POST it to llama-server (its loopback
 * port or unix socket, with the runtime's own client code), write every chunk of the answer to the
 * client as it arrives — and nothing else: no routing, queue, slot, auth, metrics or parsing. Run
 * as its own process beside the daemon, so its CPU time per relayed token is what any Node relay
 * costs on the machine, and the daemon's figure can be read against it.
 *
 *   node dist/bench/bare-relay.js <port on 127.0.0.1> <llama-server port or unix socket path>
 *
 * Prints "listening" on stdout when ready. A bench tool, not part of the image.
 */
import { createServer } from 'node:http';
import { postChild, type ChildAddress } from '../runtime/upstream.js';

const [port, upstream] = process.argv.slice(2);
if (!port || !upstream) {
  process.stderr.write('usage: bare-relay <port> <llama-server port or unix socket path>\n');
  process.exit(2);
}
const to: ChildAddress = /^\d+$/.test(upstream) ? Number(upstream) : upstream;

createServer((req, res) => {
  const body: Buffer[] = [];
  req.on('data', (c: Buffer) => body.push(c));
  req.on('end', () => {
    postChild(to, req.url ?? '/', Buffer.concat(body), AbortSignal.timeout(600_000)).then(
      (up) => {
        res.writeHead(up.statusCode ?? 502, { 'content-type': up.headers['content-type'] ?? 'application/octet-stream' });
        up.on('data', (c: Buffer) => res.write(c));
        up.on('end', () => res.end());
      },
      (e: Error) => {
        res.writeHead(502);
        res.end(e.message);
      },
    );
  });
}).listen(Number(port), '127.0.0.1', () => process.stdout.write('listening\n'));
