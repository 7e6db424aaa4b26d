/**
 * What a fuzz target is, and a helper that turns a decoder (and its
 * encoder) into one. Adding a target is one entry in ./registry.ts.
 */
import { isDeepStrictEqual } from 'node:util';
import type { Rng } from './rng.js';

/** A length (or count) field inside an input, for structure-aware mutation. */
export interface Field {
  offset: number;
  /** Bytes, big-endian. */
  size: 1 | 2 | 3;
  /** The value that would make the input consistent (e.g. the bytes that follow). */
  value: number;
}

export interface FuzzTarget {
  name: string;
  /**
   * Build any fixture (endpoints, sessions) and return the seed corpus:
   * valid inputs. Called once, before the first run.
   */
  seeds(): Buffer[] | Promise<Buffer[]>;
  /**
   * One execution. Throw (anything) to report a failure with this input.
   * Return true when the input was accepted as valid: it joins the corpus
   * as a seed for later mutations (a cheap, coverage-free feedback).
   * `rng` is for choices that are not in the input (e.g. a source address);
   * it is deterministic for a given --seed.
   */
  run(input: Buffer, rng: Rng): boolean | void | Promise<boolean | void>;
  /** A random valid input, built from the structure (optional). */
  generate?(rng: Rng): Buffer;
  /** Length fields of an input (optional): mutated to off-by-one and extreme values. */
  fields?(input: Buffer): Field[];
  /** Largest input the mutator makes (default 2048). */
  maxLength?: number;
  /** Share of the time budget relative to other targets (default 1). */
  weight?: number;
  /** One line of target-specific statistics for the summary. */
  stats?(): string;
  teardown?(): void | Promise<void>;
}

export class FuzzFailure extends Error {
  override name = 'FuzzFailure';
}

export function check(cond: unknown, message: string): asserts cond {
  if (!cond) throw new FuzzFailure(message);
}

export interface CodecOptions<T> {
  name: string;
  seeds: () => Buffer[];
  /** Must return a value or null and never throw. */
  decode: (input: Buffer) => T | null;
  /** If given, decode(encode(x)) must equal x for every x decode accepts. */
  encode?: (value: T) => Buffer;
  /** encode(decode(b)) must give back b byte for byte (default true when encode is given). */
  canonical?: boolean;
  /** Further invariants of an accepted value. */
  validate?: (value: T, input: Buffer) => void;
  generate?: (rng: Rng) => Buffer;
  fields?: (input: Buffer) => Field[];
  maxLength?: number;
  weight?: number;
}

/** A decoder as a target: value-or-null, never a throw, and round trips. */
export function codecTarget<T>(o: CodecOptions<T>): FuzzTarget {
  let accepted = 0;
  let rejected = 0;
  const target: FuzzTarget = {
    name: o.name,
    seeds: o.seeds,
    run(input) {
      const value = o.decode(input);
      check(value !== undefined, 'decoder returned undefined (expected a value or null)');
      if (value === null) {
        rejected += 1;
        return false;
      }
      accepted += 1;
      o.validate?.(value, input);
      if (o.encode) {
        const again = o.encode(value);
        if (o.canonical ?? true) {
          check(again.equals(input), `encode(decode(x)) != x: got ${again.toString('hex')}`);
        }
        const back = o.decode(again);
        check(
          back !== null,
          `decode(encode(x)) rejected its own encoding ${again.toString('hex')}`,
        );
        check(isDeepStrictEqual(back, value), 'decode(encode(x)) != x');
      }
      return true;
    },
    stats: () => `accepted ${accepted}, rejected ${rejected}`,
  };
  if (o.generate) target.generate = o.generate;
  if (o.fields) target.fields = o.fields;
  if (o.maxLength !== undefined) target.maxLength = o.maxLength;
  if (o.weight !== undefined) target.weight = o.weight;
  return target;
}
