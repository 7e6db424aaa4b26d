/**
 * The coverage map of the guided fuzzer: the counters of every module
 * instrumented by ./loader.ts, and what the current target has reached.
 *
 * A feature is (counter, bucket of its count) as in AFL: a block reached
 * once, twice, three times, 4-7, 8-15, 16-31, 32-127 or 128+ times by one
 * input. After each input the engine scans the counters (zeroing them):
 * an input with a feature no earlier input of the target had is new.
 */
import { COVERAGE_GLOBAL } from './loader.js';

interface Module {
  url: string;
  size: number;
  counters: Uint8Array;
  /** The same memory as 32-bit words (the scan skips zero words). */
  words: Uint32Array;
  /** Per counter: the buckets reached by the current target (bit mask). */
  known: Uint8Array;
  dictionary: Buffer[];
  /** Any bit in known. */
  reached: boolean;
}

const BUCKET = new Uint8Array(256);
for (let c = 1; c < 256; c += 1) {
  BUCKET[c] =
    c === 1
      ? 1
      : c === 2
        ? 2
        : c === 3
          ? 4
          : c < 8
            ? 8
            : c < 16
              ? 16
              : c < 32
                ? 32
                : c < 128
                  ? 64
                  : 128;
}

export class CoverageMap {
  private readonly modules: Module[] = [];
  scans = 0;

  /** Make this the map instrumented modules register with. */
  install(): void {
    (globalThis as Record<string, unknown>)[COVERAGE_GLOBAL] = this;
  }

  /** Called by each instrumented module as it is evaluated. */
  register(url: string, n: number, dictionary: string[]): Uint8Array {
    // Rounded up to whole 32-bit words: the scan skips zero words.
    const counters = new Uint8Array(Math.ceil(Math.max(n, 1) / 4) * 4);
    this.modules.push({
      url,
      size: n,
      counters,
      words: new Uint32Array(counters.buffer, counters.byteOffset, counters.length >> 2),
      known: new Uint8Array(counters.length),
      dictionary: dictionary.map((h) => Buffer.from(h, 'hex')),
      reached: false,
    });
    return counters;
  }

  /** Modules instrumented so far. */
  moduleCount(): number {
    return this.modules.length;
  }

  /**
   * The features of what ran since the last scan that the target had not
   * reached (counted once each); with `commit` they become known. The
   * counters are zeroed either way.
   */
  scan(commit = true): number {
    this.scans += 1;
    let fresh = 0;
    for (const m of this.modules) {
      const c = m.counters;
      const words = m.words;
      for (let w = 0; w < words.length; w += 1) {
        if (words[w] === 0) continue;
        for (let i = w * 4; i < w * 4 + 4; i += 1) {
          const v = c[i] as number;
          if (v === 0) continue;
          const b = BUCKET[v] as number;
          const k = m.known[i] as number;
          if ((k & b) === 0) {
            fresh += 1;
            if (commit) {
              m.known[i] = k | b;
              m.reached = true;
            }
          }
        }
        words[w] = 0;
      }
    }
    return fresh;
  }

  /** A new target: nothing reached, counters zeroed. */
  resetTarget(): void {
    for (const m of this.modules) {
      m.counters.fill(0);
      m.known.fill(0);
      m.reached = false;
    }
  }

  /** Blocks (counters) the target reached, and the blocks of the modules it reached. */
  blocks(): { reached: number; inModules: number; modules: number } {
    let reached = 0;
    let inModules = 0;
    let modules = 0;
    for (const m of this.modules) {
      if (!m.reached) continue;
      modules += 1;
      inModules += m.size;
      for (const k of m.known) if (k !== 0) reached += 1;
    }
    return { reached, inModules, modules };
  }

  /** Features (counter, bucket) the target reached. */
  features(): number {
    let n = 0;
    for (const m of this.modules) {
      if (!m.reached) continue;
      for (const k of m.known) {
        let x = k;
        while (x) {
          n += x & 1;
          x >>= 1;
        }
      }
    }
    return n;
  }

  /** The literals of the modules the target reached. */
  dictionary(): Buffer[] {
    const seen = new Map<string, Buffer>();
    for (const m of this.modules) {
      if (!m.reached) continue;
      for (const d of m.dictionary) seen.set(d.toString('hex'), d);
    }
    return [...seen.values()];
  }
}
