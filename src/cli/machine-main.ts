/** Entry of the image's `aios` bundle (/usr/lib/aios-runtime/aios-cli.mjs, run by /usr/bin/aios). */
import { machineMain } from './machine.js';

process.exitCode = await machineMain(process.argv);
