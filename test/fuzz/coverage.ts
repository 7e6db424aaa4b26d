/**
 * Block coverage of the code under test, from V8 itself: an in-process
 * inspector session with precise coverage in count mode. Every
 * takePreciseCoverage reports the functions that ran since the previous
 * one (their counters are reset by the take), with a range per block; a
 * block that ran has a count above 0. A feature is one such block of a
 * script whose URL contains one of the `include` strings (the project's
 * compiled sources, not the fuzzer, not node_modules, not Node's own).
 *
 * A take costs about 1-4 ms whatever ran (the protocol's JSON), so the
 * engine runs inputs in batches and takes once per batch.
 */
import { Session } from 'node:inspector';

interface Range {
  startOffset: number;
  endOffset: number;
  count: number;
}
interface FunctionCoverage {
  ranges: Range[];
}
interface ScriptCoverage {
  scriptId: string;
  url: string;
  functions: FunctionCoverage[];
}

export interface CoverageSnapshot {
  /** Blocks that ran since the previous take, as feature ids. */
  hit: number[];
}

/** The default scope of features: the project's compiled sources. */
export const DEFAULT_INCLUDE = ['/dist/src/'];

/** One function of a script, with every block ever reported in it. */
interface FunctionBlocks {
  /** [start, end, feature id] of each block. */
  blocks: [number, number, number][];
  keys: Set<string>;
}

export class BlockCoverage {
  private readonly session = new Session();
  private readonly scripts = new Map<string, number>(); // scriptId -> index, -1 if excluded
  private readonly functions = new Map<string, FunctionBlocks>();
  private nextId = 0;
  /** Every block seen in a function that ran (covered or not): the denominator. */
  private readonly seen = new Set<number>();
  private readonly functionsRun = new Set<string>();
  takes = 0;

  constructor(private readonly include: readonly string[] = DEFAULT_INCLUDE) {
    this.session.connect();
    this.post('Profiler.enable');
    this.post('Profiler.startPreciseCoverage', { callCount: true, detailed: true });
  }

  private post(method: string, params: object = {}): unknown {
    let result: unknown;
    let error: Error | null = null;
    // An in-process session answers synchronously.
    this.session.post(method, params, (e: Error | null, r: unknown) => {
      error = e;
      result = r;
    });
    if (error) throw error;
    return result;
  }

  private scriptIndex(s: ScriptCoverage): number {
    let i = this.scripts.get(s.scriptId);
    if (i === undefined) {
      i = this.include.some((p) => s.url.includes(p)) ? this.scripts.size : -1;
      this.scripts.set(s.scriptId, i);
    }
    return i;
  }

  /**
   * The blocks that ran since the previous take (and reset the counters).
   *
   * V8 drops a nested range whose count equals its parent's and merges
   * neighbours of equal count, so the ranges reported depend on the counts.
   * A block is therefore every range ever reported for its function, and
   * its count is that of the smallest range reported now that contains it
   * (the merging keeps the count of every source position).
   */
  take(): number[] {
    this.takes += 1;
    const r = this.post('Profiler.takePreciseCoverage') as { result: ScriptCoverage[] };
    const hit: number[] = [];
    for (const s of r.result) {
      const si = this.scriptIndex(s);
      if (si < 0) continue;
      for (const f of s.functions) {
        const first = f.ranges[0];
        if (!first) continue;
        const fkey = `${si}:${first.startOffset}:${first.endOffset}`;
        let fb = this.functions.get(fkey);
        if (!fb) {
          fb = { blocks: [], keys: new Set() };
          this.functions.set(fkey, fb);
        }
        for (const range of f.ranges) {
          const key = `${range.startOffset}:${range.endOffset}`;
          if (!fb.keys.has(key)) {
            fb.keys.add(key);
            fb.blocks.push([range.startOffset, range.endOffset, this.nextId]);
            this.nextId += 1;
          }
        }
        if (first.count > 0) this.functionsRun.add(fkey);
        for (const [bs, be, id] of fb.blocks) {
          let count = 0;
          let size = Infinity;
          for (const range of f.ranges) {
            const len = range.endOffset - range.startOffset;
            if (range.startOffset <= bs && be <= range.endOffset && len < size) {
              size = len;
              count = range.count;
            }
          }
          this.seen.add(id);
          if (count > 0) hit.push(id);
        }
      }
    }
    return hit;
  }

  /** Blocks known in the functions that ran (covered or not). */
  blocksSeen(): number {
    return this.seen.size;
  }

  functionsSeen(): number {
    return this.functionsRun.size;
  }

  /** Forget what was seen (a new target starts from zero). */
  resetTotals(): void {
    this.take();
    this.seen.clear();
    this.functionsRun.clear();
  }

  stop(): void {
    this.post('Profiler.stopPreciseCoverage');
    this.post('Profiler.disable');
    this.session.disconnect();
  }
}
