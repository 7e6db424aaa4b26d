/**
 * Structure-aware mutation without coverage feedback: bit flips, byte
 * sets, arithmetic, truncation, extension, insertion, deletion, chunk
 * copies, splicing with another seed, and edits of length fields (to
 * off-by-one and extreme values) where the target can name them.
 */
import type { Rng } from './rng.js';
import type { Field } from './target.js';

const INTERESTING_8 = [0, 1, 2, 0x7f, 0x80, 0xfe, 0xff];
const INTERESTING_16 = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0x3ff, 0x7fff, 0x8000, 0xfffe, 0xffff];
const INTERESTING_24 = [0, 1, 0xffff, 0x10000, 0x7fffff, 0xffffff];

export interface MutateContext {
  rng: Rng;
  /** Other seeds, for splicing. */
  corpus: readonly Buffer[];
  maxLength: number;
  fields?: ((input: Buffer) => Field[]) | undefined;
}

function writeUInt(buf: Buffer, offset: number, size: number, value: number): void {
  if (offset < 0 || offset + size > buf.length) return;
  const v = value & (size === 1 ? 0xff : size === 2 ? 0xffff : 0xffffff);
  if (size === 1) buf.writeUInt8(v, offset);
  else if (size === 2) buf.writeUInt16BE(v, offset);
  else buf.writeUIntBE(v, offset, 3);
}

function interesting(rng: Rng, size: number): number {
  return rng.pick(size === 1 ? INTERESTING_8 : size === 2 ? INTERESTING_16 : INTERESTING_24);
}

/** One mutation step; returns a new buffer (the input is not modified). */
function mutateOnce(input: Buffer, c: MutateContext): Buffer {
  const { rng } = c;
  let b = Buffer.from(input);
  const op = rng.below(13);
  switch (op) {
    case 0: // flip one bit
      if (b.length) {
        const i = rng.below(b.length);
        b[i] = (b[i] as number) ^ (1 << rng.below(8));
      }
      break;
    case 1: // set a random byte
      if (b.length) b[rng.below(b.length)] = rng.below(256);
      break;
    case 2: // set an interesting byte
      if (b.length) b[rng.below(b.length)] = interesting(rng, 1);
      break;
    case 3: // small arithmetic
      if (b.length) {
        const i = rng.below(b.length);
        b[i] = ((b[i] as number) + rng.range(-16, 16)) & 0xff;
      }
      break;
    case 4: // truncate
      b = b.subarray(0, rng.below(b.length + 1));
      break;
    case 5: // extend with random bytes or zeros
      b = Buffer.concat([
        b,
        rng.chance(0.5) ? rng.bytes(rng.range(1, 64)) : Buffer.alloc(rng.range(1, 64)),
      ]);
      break;
    case 6: {
      // insert random bytes
      const at = rng.below(b.length + 1);
      b = Buffer.concat([b.subarray(0, at), rng.bytes(rng.range(1, 16)), b.subarray(at)]);
      break;
    }
    case 7: {
      // delete a range
      if (b.length) {
        const at = rng.below(b.length);
        const n = rng.range(1, Math.min(32, b.length - at));
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + n)]);
      }
      break;
    }
    case 8: {
      // copy a chunk over another place (or duplicate it)
      if (b.length > 1) {
        const from = rng.below(b.length);
        const n = rng.range(1, Math.min(64, b.length - from));
        const chunk = Buffer.from(b.subarray(from, from + n));
        const to = rng.below(b.length);
        b = rng.chance(0.5)
          ? Buffer.concat([b.subarray(0, to), chunk, b.subarray(to)])
          : Buffer.concat([b.subarray(0, to), chunk, b.subarray(Math.min(b.length, to + n))]);
      }
      break;
    }
    case 9: {
      // splice with another seed
      const other = c.corpus.length ? rng.pick(c.corpus) : rng.bytes(rng.range(1, 64));
      const cut = rng.below(b.length + 1);
      const from = rng.below(other.length + 1);
      b = rng.chance(0.5)
        ? Buffer.concat([b.subarray(0, cut), other.subarray(from)])
        : Buffer.concat([b, other]); // two messages back to back
      break;
    }
    case 10:
    case 11: {
      // edit a length field: a named one if the target knows, else anywhere
      const fields = c.fields?.(b) ?? [];
      if (fields.length && rng.chance(0.85)) {
        const f = rng.pick(fields);
        const choices = [
          f.value - 1,
          f.value + 1,
          0,
          interesting(rng, f.size),
          f.value + rng.range(-8, 8),
          rng.u32(),
        ];
        writeUInt(b, f.offset, f.size, rng.pick(choices));
      } else if (b.length >= 2) {
        const size = rng.pick([1, 2, 2, 3] as const);
        const at = rng.below(Math.max(1, b.length - size + 1));
        const remaining = b.length - at - size;
        writeUInt(
          b,
          at,
          size,
          rng.pick([remaining, remaining + 1, remaining - 1, interesting(rng, size)]),
        );
      }
      break;
    }
    default: {
      // overwrite a run with one value
      if (b.length) {
        const at = rng.below(b.length);
        b.fill(interesting(rng, 1), at, Math.min(b.length, at + rng.range(1, 16)));
      }
    }
  }
  return b.length > c.maxLength ? b.subarray(0, c.maxLength) : b;
}

/** 1 to 6 stacked mutations of `input` (fewer more often). */
export function mutate(input: Buffer, c: MutateContext): Buffer {
  let b = input;
  const n = 1 + Math.min(rngGeometric(c.rng), 5);
  for (let i = 0; i < n; i += 1) b = mutateOnce(b, c);
  return b.equals(input) ? mutateOnce(b, c) : b;
}

function rngGeometric(rng: Rng): number {
  let n = 0;
  while (n < 5 && rng.chance(0.5)) n += 1;
  return n;
}

/** Random bytes, of a length that favours small and boundary sizes. */
export function randomInput(rng: Rng, maxLength: number): Buffer {
  const len = rng.chance(0.3) ? rng.below(32) : rng.below(maxLength + 1);
  return rng.bytes(len);
}
