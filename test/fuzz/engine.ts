/**
 * The coverage-guided engine: AFL-style corpus growth over any FuzzTarget
 * of the registry, unchanged. Inputs are made by the same mutators as the
 * random runner (./mutate.ts, the target's `fields` and `generate`), plus
 * the literals of the code the target reached (./instrument.ts); an input
 * joins the corpus when the edge counters (./coverage.ts) show a feature
 * (a block, or a block reached a new number of times) that no earlier
 * input of the target had.
 *
 * Inputs a target reports as accepted (run() returned true) also feed the
 * mutations, as in the random runner: the only feedback there is for code
 * the instrumentation cannot see (OpenSSL, behind the DTLS binding).
 */
import { performance } from 'node:perf_hooks';
import type { CoverageMap } from './coverage.js';
import { mutate, randomInput } from './mutate.js';
import { hashString, Rng } from './rng.js';
import type { FuzzTarget } from './target.js';

/** Inputs accepted by the target kept for mutation (replaced at random). */
const MAX_ACCEPTED = 256;
/** Let timers and deferred errors run this often. */
const YIELD_MS = 200;
/** Inputs made by the target's generator for the initial corpus. */
const GENERATED_SEEDS = 16;

export interface EngineOptions {
  coverage: CoverageMap;
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
  /** Called at most every `progressMs` with the inputs run so far (long runs). */
  progress?: ((inputs: number, seconds: number) => void) | undefined;
  progressMs?: number | undefined;
}

export interface EngineResult {
  name: string;
  /** Inputs run (the initial corpus included). */
  inputs: number;
  seconds: number;
  setupMs: number;
  /** Coverage-corpus entries (initial ones that reached new features, then found ones). */
  corpus: number;
  corpusBytes: number;
  /** Entries found by mutation (not in the initial corpus). */
  found: number;
  /** Blocks (edge counters) reached, of those in the modules reached. */
  blocks: number;
  blocksInModules: number;
  modules: number;
  /** (block, hit-count bucket) features reached. */
  features: number;
  /** Inputs run when the last new feature was found. */
  lastFind: number;
  dictionary: number;
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

/** Overwrite or insert one dictionary token. */
function dictionaryMutation(b: Buffer, dict: readonly Buffer[], rng: Rng, max: number): Buffer {
  const tok = rng.pick(dict);
  const at = rng.below(b.length + 1);
  const out = rng.chance(0.5)
    ? Buffer.concat([b.subarray(0, at), tok, b.subarray(at)])
    : Buffer.concat([b.subarray(0, at), tok, b.subarray(Math.min(b.length, at + tok.length))]);
  return out.length > max ? out.subarray(0, max) : out;
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

  cov.resetTarget(); // the fixture's own code does not count
  const corpus: Buffer[] = [];
  const accepted: Buffer[] = [];
  let inputs = 0;
  let lastFind = 0;
  let lastYield = performance.now();
  let lastProgress = lastYield;
  const done = (): boolean =>
    (o.runs !== null && inputs >= o.runs) || performance.now() >= deadline;

  const maybeYield = async (): Promise<void> => {
    if (performance.now() - lastYield < YIELD_MS) return;
    cov.scan();
    await yieldToLoop();
    cov.scan(); // what timers ran belongs to no input
    lastYield = performance.now();
    if (o.progress && lastYield - lastProgress >= (o.progressMs ?? 60_000)) {
      lastProgress = lastYield;
      o.progress(inputs, (lastYield - started) / 1000);
    }
  };
  const noteAccepted = (input: Buffer): void => {
    if (accepted.length < MAX_ACCEPTED) accepted.push(input);
    else accepted[inputRng.below(accepted.length)] = input;
  };
  let dict: Buffer[] = [];
  const execute = async (input: Buffer): Promise<void> => {
    const ok = await runOne(t, input, runRng);
    inputs += 1;
    if (cov.scan() > 0 && o.guided) {
      corpus.push(input);
      lastFind = inputs;
      if (corpus.length % 8 === 1) dict = cov.dictionary();
    }
    if (ok) noteAccepted(input);
  };

  // The initial corpus, one input at a time: each joins if it reaches new features.
  const generated = t.generate
    ? Array.from({ length: GENERATED_SEEDS }, () => (t.generate as (r: Rng) => Buffer)(inputRng))
    : [];
  cov.scan(false); // a generator may call the code's encoders: that is no input's coverage
  for (const input of [...o.initial, ...seeds, ...generated]) {
    await execute(input);
    await maybeYield();
  }
  const initialEntries = corpus.length;
  dict = o.guided ? cov.dictionary() : [];

  // Parents: the coverage corpus (newest entries more often), accepted inputs, seeds.
  const pick = (): Buffer => {
    const r = inputRng.below(100);
    if (corpus.length && r < 60) {
      const from = inputRng.chance(0.33) ? Math.max(0, corpus.length - 8) : 0;
      return corpus[from + inputRng.below(corpus.length - from)] as Buffer;
    }
    if (accepted.length && r < 80) return inputRng.pick(accepted);
    if (seeds.length) return inputRng.pick(seeds);
    return corpus.length ? inputRng.pick(corpus) : randomInput(inputRng, maxLength);
  };
  let splice: Buffer[] = [];
  let spliceFor = -1;
  const next = (): Buffer => {
    const choice = inputRng.below(100);
    if (choice < 5) return randomInput(inputRng, maxLength);
    if (choice < 15 && t.generate) {
      const g = t.generate(inputRng);
      cov.scan(false);
      return g;
    }
    if (spliceFor !== corpus.length) {
      splice = [...seeds, ...corpus, ...accepted.slice(0, 32)];
      spliceFor = corpus.length;
    }
    const m = mutate(pick(), { rng: inputRng, corpus: splice, maxLength, fields: t.fields });
    return dict.length && choice >= 85 ? dictionaryMutation(m, dict, inputRng, maxLength) : m;
  };

  while (!done()) {
    await execute(next());
    await maybeYield();
  }
  const seconds = (performance.now() - started) / 1000;
  const blocks = cov.blocks();
  const features = cov.features();

  let minimized: Buffer[] | undefined;
  if (o.minimize) minimized = await minimize(t, corpus, o.minimize, cov, runRng);

  const result: EngineResult = {
    name: t.name,
    inputs,
    seconds,
    setupMs,
    corpus: corpus.length,
    corpusBytes: corpus.reduce((s, e) => s + e.length, 0),
    found: corpus.length - initialEntries,
    blocks: blocks.reached,
    blocksInModules: blocks.inModules,
    modules: blocks.modules,
    features,
    lastFind,
    dictionary: dict.length,
    stats: t.stats?.() ?? '',
  };
  if (minimized) result.minimized = minimized;
  return result;
}

/**
 * The smallest inputs first, each kept if it reaches a feature no kept
 * input reached (libFuzzer's merge, greedily), within the size bounds.
 */
async function minimize(
  t: FuzzTarget,
  corpus: readonly Buffer[],
  bounds: { maxFiles: number; maxBytes: number },
  cov: CoverageMap,
  rng: Rng,
): Promise<Buffer[]> {
  const byHex = new Map<string, Buffer>();
  for (const e of corpus) byHex.set(e.toString('hex'), e);
  const candidates = [...byHex.values()].sort((a, b) => a.length - b.length || a.compare(b));
  cov.resetTarget();
  const kept: Buffer[] = [];
  let bytes = 0;
  for (const input of candidates) {
    if (kept.length >= bounds.maxFiles || bytes + input.length > bounds.maxBytes) continue;
    await runOne(t, input, rng);
    if (cov.scan() > 0) {
      kept.push(input);
      bytes += input.length;
    }
  }
  return kept;
}
