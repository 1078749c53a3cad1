/**
 * Starting the daemon from a config file, in the order that makes it ready soonest: read and check
 * the config, start the operational model's llama-server, and only then load the rest of the daemon
 * (gRPC, HTTP, the service; most of the code), so the model loads while Node.js compiles it. The
 * runtime bundle is split at the dynamic import below.
 */
import { existsSync } from 'node:fs';
import { readRuntimeConfig } from './config.js';
import { LlamaServerLauncher } from './launch.js';
import { Router } from './router.js';

export async function serveConfigFile(file: string, overrides: { listen?: string; socket?: string; http?: string } = {}, marks: { modules?: number } = {}): Promise<number> {
  const config = await readRuntimeConfig(file);
  const configRead = Math.round(performance.now());
  const launcher = new LlamaServerLauncher(config.runtime.llama_server);
  const op = new Router(config, () => [], () => undefined).profile('operational');
  // Only a model that is there: a missing one is installed or refused by the daemon, as usual.
  let early: number | undefined;
  if (op && existsSync(op.path) && existsSync(config.runtime.llama_server)) {
    await launcher.prelaunch(op);
    early = Math.round(performance.now());
  }
  const { runDaemon } = await import('./daemon.js');
  return runDaemon(config, { overrides, marks: { ...marks, config: configRead, early }, service: { launcher } });
}
