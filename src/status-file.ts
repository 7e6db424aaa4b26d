/**
 * A running node publishes its state as status.json in its state
 * directory (0600, replaced atomically once a second); `shallot status`
 * reads it. No socket to secure, nothing that outlives the process but a
 * file marked stopped.
 */
import fs from 'node:fs';
import path from 'node:path';

export const STATUS_FILE = 'status.json';
export const STATUS_INTERVAL_MS = 1000;

export function writeStatus(dir: string, status: object): void {
  const file = path.join(dir, STATUS_FILE);
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, JSON.stringify(status, null, 2) + '\n', { mode: 0o600 });
    fs.renameSync(tmp, file);
  } catch {
    /* status is best effort: a full disk must not stop the tunnel */
  }
}

export function readStatus(dir: string): Record<string, unknown> | null {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, STATUS_FILE), 'utf8')) as Record<
      string,
      unknown
    >;
  } catch {
    return null;
  }
}
