/**
 * The guard state on disk: `guards.json` in the state directory, 0600,
 * written to a temporary file and renamed (never half written). The pure
 * state machine is in guards.ts; this is its only I/O.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../src/log.js';
import { GuardList } from './guards.js';

export const GUARDS_FILE = 'guards.json';

export function loadGuardList(dir: string | null, now: number, log: Logger): GuardList {
  if (!dir) return new GuardList();
  const file = path.join(dir, GUARDS_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return new GuardList();
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    log.warn(`${file} is not JSON: starting with no guards`);
    return new GuardList();
  }
  const { list, note } = GuardList.fromJSON(doc, now);
  if (note) log.info(`${file}: ${note}`);
  if (list.dirty) saveGuardList(dir, list);
  return list;
}

export function saveGuardList(dir: string | null, list: GuardList): void {
  list.dirty = false;
  if (!dir) return;
  const file = path.join(dir, GUARDS_FILE);
  try {
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(list.toJSON(), null, 2) + '\n', {
      mode: 0o600,
    });
    fs.renameSync(`${file}.tmp`, file);
  } catch {
    /* best effort: the next change tries again */
    list.dirty = true;
  }
}
