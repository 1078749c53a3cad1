/** The runtime's leveled log (src/runtime/log.ts). */
import { expect, it } from 'vitest';
import { leveledLog } from '../../src/runtime/log.js';

it('drops lines below the level and prefixes syslog priorities for the journal', () => {
  const plain: string[] = [];
  const log = leveledLog('warn', (s) => plain.push(s), { journal: false });
  log('info line');
  log('debug line', 'debug');
  log('warn line', 'warn');
  log('error line', 'error');
  expect(plain).toEqual(['warn line', 'error line']);
  const journal: string[] = [];
  const j = leveledLog('debug', (s) => journal.push(s), { journal: true });
  j('a', 'debug');
  j('b');
  j('c', 'warn');
  j('d', 'error');
  expect(journal).toEqual(['<7>a', '<6>b', '<4>c', '<3>d']);
});
