/**
 * Entry point of the bundled aios-runtime (the image runs `node /usr/lib/aios-runtime/aios-runtime.mjs
 * --config /etc/aios/config.toml`). Outside the image the same daemon runs as `aios runtime serve`.
 */
import { serveConfigFile } from './entry.js';

// Every static import above has been evaluated by now (the daemon itself is loaded later, by entry.ts).
const modules = Math.round(performance.now());

const args = process.argv.slice(2);
const opt = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
if (args.includes('--help')) {
  process.stdout.write('usage: aios-runtime --config /etc/aios/config.toml [--listen host:port] [--socket path] [--http host:port]\n');
  process.exit(0);
}
serveConfigFile(opt('--config') ?? '/etc/aios/config.toml', { listen: opt('--listen'), socket: opt('--socket'), http: opt('--http') }, { modules }).then(
  (code) => process.exit(code),
  (e: Error) => {
    process.stderr.write(`aios-runtime: ${e.message}\n`);
    process.exit(1);
  },
);
