/**
 * The coverage-guided engine: AFL-style corpus growth over any FuzzTarget
 * of the registry, unchanged. Inputs are made by the same mutators as the
 * random runner (./mutate.ts, the target's `fields` and `generate`); an
 * input joins the corpus when V8's block coverage (./coverage.ts) shows
 * that it ran a block of the project's code that no earlier input ran.
 *
 * Coverage is taken once per batch of inputs (a take costs milliseconds):
 * the batch grows while nothing new turns up (1, 2, 4 ... MAX_BATCH
 * inputs, or BATCH_MS), and a batch that reached new blocks is run again
 * one input at a time to find which inputs did. Inputs a target reports as
 * accepted (run() returned true) also feed the mutations, as in the random
 * runner: the only feedback there is for code V8 cannot see (OpenSSL).
 */
import { performance } from 'node:perf_hooks';
import type { BlockCoverage } from './coverage.js';
import { mutate, randomInput } from './mutate.js';
import { hashString, Rng } from './rng.js';
import type { FuzzTarget } from './target.js';

/** Largest batch between two coverage takes. */
const MAX_BATCH = 256;
/** A batch also ends after this long (slow targets). */
const BATCH_MS = 100;
/** Inputs accepted by the target kept for mutation (replaced at random). */
const MAX_ACCEPTED = 256;
/** Let timers and deferred errors run this often. */
const YIELD_MS = 200;
/** Inputs made by the target's generator for the initial corpus. */
const GENERATED_SEEDS = 16;

export interface EngineOptions {
  coverage: BlockCoverage;
  seed: number;
  /** Stop after this many inputs (the initial corpus included)... */
  runs: number | null;
  /** ...or after this long, whichever comes first. */
  budgetMs: number;
  /** Inputs to start from (stored corpus, protocol vectors), before the target's seeds. */
  initial: readonly Buffer[];
  /** false: no coverage feedback (the random runner's behaviour), coverage only measured. */
  guided: boolean;
  /** Minimize the corpus at the end (for saving it), within these bounds. */
  minimize?: { maxFiles: number; maxBytes: number } | undefined;
}

export interface EngineResult {
  name: string;
  /** Distinct inputs tried (the initial corpus included). */
  inputs: number;
  /** Executions: inputs, plus the reruns that found which input of a batch was new. */
  execs: number;
  seconds: number;
  setupMs: number;
  /** Coverage-corpus entries (initial ones that reached new blocks, then found ones). */
  corpus: number;
  corpusBytes: number;
  /** Entries found by mutation (not in the initial corpus). */
  found: number;
  blocks: number;
  blocksSeen: number;
  functions: number;
  takes: number;
  /** The minimized corpus, if asked for. */
  minimized?: Buffer[];
  stats: string;
}

/** Thrown when a target fails on an input; run() has already thrown `cause`. */
export class TargetFailure extends Error {
  constructor(
    readonly target: string,
    readonly input: Buffer,
    override readonly cause: unknown,
  ) {
    super(`${target} failed`);
  }
}

/** The input being run (for errors thrown later by timers or promises). */
export let currentInput: { target: string; input: Buffer } | null = null;

const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

async function runOne(t: FuzzTarget, input: Buffer, rng: Rng): Promise<boolean> {
  currentInput = { target: t.name, input };
  try {
    const r = t.run(input, rng);
    return (r instanceof Promise ? await r : r) === true;
  } catch (e) {
    throw new TargetFailure(t.name, input, e);
  } finally {
    currentInput = null;
  }
}

interface Entry {
  input: Buffer;
  newBlocks: number;
}

export async function fuzzGuided(t: FuzzTarget, o: EngineOptions): Promise<EngineResult> {
  const cov = o.coverage;
  const started = performance.now();
  const seeds = await t.seeds();
  const setupMs = performance.now() - started;
  const deadline = started + o.budgetMs;
  const rng = new Rng(o.seed ^ hashString(t.name));
  const inputRng = rng.fork('inputs');
  const runRng = rng.fork('run');
  const maxLength = t.maxLength ?? 2048;
  const takesBefore = cov.takes;

  cov.resetTotals(); // the fixture's own code does not count
  const known = new Set<number>();
  const addNew = (hit: readonly number[]): number => {
    let n = 0;
    for (const id of hit) {
      if (!known.has(id)) {
        known.add(id);
        n += 1;
      }
    }
    return n;
  };
  const anyNew = (hit: readonly number[]): boolean => hit.some((id) => !known.has(id));

  const corpus: Entry[] = [];
  const accepted: Buffer[] = [];
  let inputs = 0;
  let execs = 0;
  let lastYield = performance.now();
  const done = (): boolean =>
    (o.runs !== null && inputs >= o.runs) || performance.now() >= deadline;

  const maybeYield = async (): Promise<void> => {
    if (performance.now() - lastYield < YIELD_MS) return;
    await yieldToLoop();
    addNew(cov.take()); // what timers ran belongs to no input
    lastYield = performance.now();
  };
  const noteAccepted = (input: Buffer): void => {
    if (accepted.length < MAX_ACCEPTED) accepted.push(input);
    else accepted[inputRng.below(accepted.length)] = input;
  };

  // The initial corpus, one input at a time: each joins if it reaches new blocks.
  const generated = t.generate
    ? Array.from({ length: GENERATED_SEEDS }, () => (t.generate as (r: Rng) => Buffer)(inputRng))
    : [];
  const initial = [...o.initial, ...seeds, ...generated];
  for (const input of initial) {
    const ok = await runOne(t, input, runRng);
    inputs += 1;
    execs += 1;
    const n = addNew(cov.take());
    if (n > 0) corpus.push({ input, newBlocks: n });
    if (ok) noteAccepted(input);
    await maybeYield();
  }
  const initialEntries = corpus.length;

  // Pools for mutation: the seeds (always), the coverage corpus, accepted inputs.
  const pick = (): Buffer => {
    const r = inputRng.below(100);
    if (corpus.length && r < 60) {
      // Newer entries are more often the frontier: a third of the picks.
      const recent = inputRng.chance(0.33);
      const from = recent ? Math.max(0, corpus.length - 8) : 0;
      return (corpus[from + inputRng.below(corpus.length - from)] as Entry).input;
    }
    if (accepted.length && r < 80) return inputRng.pick(accepted);
    if (seeds.length) return inputRng.pick(seeds);
    return corpus.length ? inputRng.pick(corpus).input : randomInput(inputRng, maxLength);
  };
  let splice: Buffer[] = [];
  const refreshSplice = () => {
    splice = [...seeds, ...corpus.map((e) => e.input), ...accepted.slice(0, 32)];
  };
  refreshSplice();

  const next = (): Buffer => {
    const choice = inputRng.below(100);
    if (choice < 5) return randomInput(inputRng, maxLength);
    if (choice < 15 && t.generate) return t.generate(inputRng);
    return mutate(pick(), { rng: inputRng, corpus: splice, maxLength, fields: t.fields });
  };

  let batchSize = o.guided ? 1 : MAX_BATCH;
  const batch: Buffer[] = [];
  while (!done()) {
    batch.length = 0;
    const batchStart = performance.now();
    while (batch.length < batchSize && !done()) {
      const input = next();
      batch.push(input);
      if (await runOne(t, input, runRng)) noteAccepted(input);
      inputs += 1;
      execs += 1;
      if (performance.now() - batchStart > BATCH_MS) break;
    }
    const hit = cov.take();
    if (!o.guided || !anyNew(hit)) {
      addNew(hit);
      batchSize = Math.min(MAX_BATCH, batchSize * 2);
    } else if (batch.length === 1) {
      corpus.push({ input: batch[0] as Buffer, newBlocks: addNew(hit) });
      refreshSplice();
      batchSize = 1;
    } else {
      // Which inputs of the batch reached the new blocks? Run them again alone.
      for (const input of batch) {
        await runOne(t, input, runRng);
        execs += 1;
        const n = addNew(cov.take());
        if (n > 0) corpus.push({ input, newBlocks: n });
      }
      addNew(hit); // stateful targets may not repeat themselves
      refreshSplice();
      batchSize = 1;
    }
    await maybeYield();
  }
  const seconds = (performance.now() - started) / 1000;

  let minimized: Buffer[] | undefined;
  if (o.minimize) minimized = await minimize(t, corpus, o.minimize, cov, runRng);

  const result: EngineResult = {
    name: t.name,
    inputs,
    execs,
    seconds,
    setupMs,
    corpus: corpus.length,
    corpusBytes: corpus.reduce((s, e) => s + e.input.length, 0),
    found: corpus.length - initialEntries,
    blocks: known.size,
    blocksSeen: Math.max(cov.blocksSeen(), known.size),
    functions: cov.functionsSeen(),
    takes: cov.takes - takesBefore,
    stats: t.stats?.() ?? '',
  };
  if (minimized) result.minimized = minimized;
  return result;
}

/**
 * The smallest inputs first, each kept if it reaches a block no kept input
 * reached (libFuzzer's merge, greedily), within the size bounds.
 */
async function minimize(
  t: FuzzTarget,
  corpus: readonly Entry[],
  bounds: { maxFiles: number; maxBytes: number },
  cov: BlockCoverage,
  rng: Rng,
): Promise<Buffer[]> {
  const byHex = new Map<string, Buffer>();
  for (const e of corpus) byHex.set(e.input.toString('hex'), e.input);
  const candidates = [...byHex.values()].sort(
    (a, b) => a.length - b.length || a.compare(b), // deterministic order
  );
  const covered = new Set<number>();
  const kept: Buffer[] = [];
  let bytes = 0;
  cov.take();
  for (const input of candidates) {
    if (kept.length >= bounds.maxFiles || bytes + input.length > bounds.maxBytes) continue;
    await runOne(t, input, rng);
    let n = 0;
    for (const id of cov.take()) {
      if (!covered.has(id)) {
        covered.add(id);
        n += 1;
      }
    }
    if (n > 0) {
      kept.push(input);
      bytes += input.length;
    }
  }
  return kept;
}
