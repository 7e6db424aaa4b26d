/**
 * Kernel parameters under /proc/sys, the other half of the control-plane
 * seam (see ./command-runner.ts): the exit turns IP forwarding on and puts
 * it back. The real port reads and writes the files (no `sysctl` binary
 * needed); RecordingRunner is its twin. Errors are Node's own (with `code`
 * EACCES, ENOENT, ...): the caller says what it was doing.
 */
import { readFileSync, writeFileSync } from 'node:fs';

export interface Sysctls {
  /** The value, whitespace trimmed. */
  read(path: string): string;
  write(path: string, value: string): void;
}

export const procSysctls: Sysctls = {
  read: (path) => readFileSync(path, 'utf8').trim(),
  write: (path, value) => writeFileSync(path, `${value}\n`),
};
