/**
 * Relay files: one text descriptor (base64url of the wire bytes) per line;
 * blank lines and lines starting with '#' are ignored. Loading keeps the
 * valid descriptors, one per node id (the newest `published` wins), and
 * counts the rejected lines by reason.
 *
 * Bounded: the file is read in chunks, at most RELAY_FILE_MAX_LINES lines
 * (and RELAY_FILE_MAX_LINES * (RELAY_FILE_MAX_LINE_CHARS + 2) bytes) are
 * considered, and a line longer than RELAY_FILE_MAX_LINE_CHARS is rejected
 * as malformed without being kept in memory.
 */
import fs from 'node:fs';
import { ShallotError } from '../errors.js';
import {
  DESCRIPTOR_MAX_TEXT_CHARS,
  DESCRIPTOR_REJECT_REASONS,
  type Descriptor,
  type DescriptorRejectReason,
  descriptorFromText,
  verifyDescriptor,
} from './descriptor.js';

export const RELAY_FILE_MAX_LINES = 10_000;
/** Longer lines cannot hold a descriptor; they count as malformed. */
export const RELAY_FILE_MAX_LINE_CHARS = 2 * DESCRIPTOR_MAX_TEXT_CHARS;

export interface RelayFile {
  /** Valid descriptors, one per node id, in order of first appearance of the id. */
  relays: Descriptor[];
  /** Rejected lines by reason. */
  counts: Record<DescriptorRejectReason, number>;
  /** Valid descriptors dropped because another one for the same id won. */
  duplicates: number;
  /** True if the file is longer than the limits above (the rest was not read). */
  truncated: boolean;
}

const CHUNK_BYTES = 64 * 1024;

function relayFileError(file: string, e: unknown): ShallotError {
  const code = (e as NodeJS.ErrnoException).code;
  const why =
    code === 'ENOENT'
      ? 'does not exist'
      : code === 'EISDIR'
        ? 'is a directory'
        : code === 'EACCES'
          ? 'is not readable (permission denied)'
          : `cannot be read: ${(e as Error).message}`;
  return new ShallotError('BAD_RELAY_FILE', 'user', `relay file ${file} ${why}`, { cause: e });
}

/**
 * Calls `onLine` for each of the first `maxLines` lines (without the line
 * break; a line over `maxChars` is passed as null). Reads at most
 * `maxLines * (maxChars + 2)` bytes, so even a file with no line breaks
 * (or a device) costs bounded time. Returns true if the file has more than
 * was considered.
 */
function forEachLine(
  fd: number,
  maxLines: number,
  maxChars: number,
  onLine: (line: string | null) => void,
): boolean {
  const chunk = Buffer.alloc(CHUNK_BYTES);
  const maxBytes = maxLines * (maxChars + 2);
  let total = 0;
  let partial = '';
  let overlong = false;
  let lines = 0;
  const emit = (): boolean => {
    onLine(overlong ? null : partial);
    partial = '';
    overlong = false;
    lines += 1;
    return lines >= maxLines;
  };
  for (;;) {
    if (total >= maxBytes) return true;
    const n = fs.readSync(fd, chunk, 0, Math.min(chunk.length, maxBytes - total), null);
    if (n === 0) break;
    total += n;
    // latin1: a byte is a character, so a chunk boundary never splits one;
    // anything that is not base64url is rejected later anyway.
    const text = chunk.toString('latin1', 0, n);
    let start = 0;
    for (;;) {
      const nl = text.indexOf('\n', start);
      const piece = text.slice(start, nl < 0 ? text.length : nl);
      if (!overlong) {
        if (partial.length + piece.length > maxChars) {
          overlong = true;
          partial = '';
        } else {
          partial += piece;
        }
      }
      if (nl < 0) break;
      if (emit()) {
        // Limit reached: is there anything after this line?
        if (nl + 1 < n) return true;
        return fs.readSync(fd, chunk, 0, 1, null) > 0;
      }
      start = nl + 1;
    }
  }
  if (partial.length > 0 || overlong) emit();
  return false;
}

function newer(a: { d: Descriptor; wire: Buffer }, b: { d: Descriptor; wire: Buffer }): boolean {
  if (a.d.published !== b.d.published) return a.d.published > b.d.published;
  if (a.d.expires !== b.d.expires) return a.d.expires > b.d.expires;
  // Full tie: any fixed rule, so that the result does not depend on line order.
  return Buffer.compare(a.wire, b.wire) > 0;
}

/**
 * Load the relay file at `file`. Throws a user error (BAD_RELAY_FILE) if it
 * cannot be read; never for its content.
 */
export function loadRelayFile(
  file: string,
  options: { now: number; network: string; clockSkewS?: number },
): RelayFile {
  const counts = Object.fromEntries(DESCRIPTOR_REJECT_REASONS.map((r) => [r, 0])) as Record<
    DescriptorRejectReason,
    number
  >;
  const best = new Map<string, { d: Descriptor; wire: Buffer }>();
  let duplicates = 0;
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw relayFileError(file, e);
  }
  let truncated: boolean;
  try {
    truncated = forEachLine(fd, RELAY_FILE_MAX_LINES, RELAY_FILE_MAX_LINE_CHARS, (raw) => {
      if (raw === null) {
        counts.malformed += 1;
        return;
      }
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) return;
      const wire = descriptorFromText(line);
      if (!wire) {
        counts.malformed += 1;
        return;
      }
      const r = verifyDescriptor(wire, options);
      if (!r.ok) {
        counts[r.reason] += 1;
        return;
      }
      const entry = { d: r.descriptor, wire: r.wire };
      const held = best.get(entry.d.id);
      if (held) {
        duplicates += 1;
        if (newer(entry, held)) best.set(entry.d.id, entry);
      } else {
        best.set(entry.d.id, entry);
      }
    });
  } catch (e) {
    throw relayFileError(file, e);
  } finally {
    fs.closeSync(fd);
  }
  return { relays: [...best.values()].map((e) => e.d), counts, duplicates, truncated };
}
