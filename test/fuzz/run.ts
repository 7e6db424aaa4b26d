/**
 * The fuzz runner: random and mutated inputs (from each target's valid
 * seeds) into every decoder and state machine that sees network input.
 *
 *   node dist/test/fuzz/run.js [--seconds 60] [--seed 1] [--runs N]
 *                              [--target A,B] [--skip A,B] [--list]
 *                              [--input HEX --target NAME]
 *
 * The time budget is split over the targets by weight. The inputs tried
 * are a function of --seed alone (the same seed gives the same sequence of
 * mutations; --runs N fixes the number per target instead of the time).
 * Seeds captured from live DTLS handshakes differ from run to run (DTLS
 * randomness), so the bytes of those targets' inputs do too.
 *
 * Exit status 0 when every target held its invariants; 1 with the target,
 * the reason and the failing input in hex otherwise; 2 on bad arguments.
 */
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { mutate, randomInput } from './mutate.js';
import { targets } from './registry.js';
import { hashString, Rng } from './rng.js';
import { FuzzFailure, type FuzzTarget } from './target.js';

interface Options {
  seconds: number;
  seed: number;
  runs: number | null;
  only: string[] | null;
  skip: string[];
  list: boolean;
  input: Buffer | null;
}

function usage(message: string): never {
  console.error(`fuzz: ${message}`);
  console.error(
    'usage: run.js [--seconds S] [--seed N] [--runs N] [--target A,B] [--skip A,B] [--list] [--input HEX]',
  );
  process.exit(2);
}

function parseOptions(argv: string[]): Options {
  const o: Options = {
    seconds: 60,
    seed: 1,
    runs: null,
    only: null,
    skip: [],
    list: false,
    input: null,
  };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i] as string;
    const value = (): string => {
      const v = argv[i + 1];
      if (v === undefined) usage(`${a} needs a value`);
      i += 1;
      return v;
    };
    const number = (min: number): number => {
      const n = Number(value());
      if (!Number.isFinite(n) || n < min) usage(`${a} needs a number >= ${min}`);
      return n;
    };
    if (a === '--seconds') o.seconds = number(0.1);
    else if (a === '--seed') o.seed = Math.floor(number(0)) >>> 0;
    else if (a === '--runs') o.runs = Math.floor(number(1));
    else if (a === '--target') o.only = value().split(',').filter(Boolean);
    else if (a === '--skip') o.skip = value().split(',').filter(Boolean);
    else if (a === '--list') o.list = true;
    else if (a === '--input') {
      const hex = value();
      if (!/^([0-9a-fA-F]{2})*$/.test(hex)) usage('--input needs hex bytes');
      o.input = Buffer.from(hex, 'hex');
    } else usage(`unknown argument ${a}`);
  }
  return o;
}

/** A name matches a pattern equal to it or to a prefix ending in '/'. */
function matches(name: string, patterns: string[]): boolean {
  return patterns.some((p) => name === p || (p.endsWith('/') && name.startsWith(p)));
}

let current: { target: string; input: Buffer } | null = null;
let options: Options;

/** Thrown out of a target's loop once its failure is printed. */
class TargetFailed extends Error {}

function report(target: string, input: Buffer, e: unknown): void {
  const expected = e instanceof FuzzFailure;
  console.log(`FAIL ${target}: ${expected ? e.message : 'threw'}`);
  if (!expected) console.log(e instanceof Error ? (e.stack ?? e.message) : String(e));
  console.log(`input (${input.length} bytes): ${input.toString('hex') || '(empty)'}`);
  console.log(
    `reproduce: node dist/test/fuzz/run.js --target ${target} --input ${input.toString('hex') || "''"}` +
      ' (a stateful target may need the preceding inputs: add --seed ' +
      `${options.seed} without --input)`,
  );
}

// An error thrown later by a timer or a promise: the input being run is the
// best suspect; the state of the process is unknown, so stop.
function fatal(e: unknown): never {
  if (current) report(current.target, current.input, e);
  else console.log('FAIL (outside any target):', e);
  process.exit(1);
}
process.on('uncaughtException', fatal);
process.on('unhandledRejection', fatal);

const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

async function runOne(t: FuzzTarget, input: Buffer, rng: Rng): Promise<boolean> {
  current = { target: t.name, input };
  try {
    const r = t.run(input, rng);
    return (r instanceof Promise ? await r : r) === true;
  } catch (e) {
    report(t.name, input, e);
    throw new TargetFailed(t.name);
  } finally {
    current = null;
  }
}

/** Fuzz one target for its budget; false if it failed (already reported). */
async function fuzz(t: FuzzTarget, budgetMs: number): Promise<boolean> {
  try {
    await fuzzTarget(t, budgetMs);
    return true;
  } catch (e) {
    if (!(e instanceof TargetFailed)) throw e;
    await t.teardown?.();
    return false;
  }
}

async function fuzzTarget(t: FuzzTarget, budgetMs: number): Promise<void> {
  const started = performance.now();
  const seeds = await t.seeds();
  const setupMs = performance.now() - started;
  const rng = new Rng(options.seed ^ hashString(t.name));
  const inputRng = rng.fork('inputs');
  const runRng = rng.fork('run');
  const maxLength = t.maxLength ?? 2048;
  const kept: Buffer[] = [];
  const digest = createHash('sha256');
  const rssBefore = process.memoryUsage().rss;
  let execs = 0;
  let lastYield = performance.now();
  const deadline = started + budgetMs;
  const done = (): boolean =>
    options.runs !== null ? execs >= options.runs : performance.now() >= deadline;

  if (options.input) {
    await runOne(t, options.input, runRng);
    console.log(`${t.name}: the input passes`);
    return;
  }
  // The seeds themselves first: they must pass too.
  for (const s of seeds) {
    await runOne(t, s, runRng);
    execs += 1;
  }
  const corpus = (): Buffer[] => (kept.length ? [...seeds, ...kept] : seeds);
  let pool = corpus();
  while (!done()) {
    const choice = inputRng.below(100);
    let input: Buffer;
    if (choice < 8 || pool.length === 0) input = randomInput(inputRng, maxLength);
    else if (choice < 20 && t.generate) input = t.generate(inputRng);
    else {
      input = mutate(inputRng.pick(pool), {
        rng: inputRng,
        corpus: pool,
        maxLength,
        fields: t.fields,
      });
    }
    digest.update(input);
    if (await runOne(t, input, runRng)) {
      // Accepted inputs seed later mutations (bounded; replaced at random).
      if (kept.length < 256) kept.push(input);
      else kept[inputRng.below(kept.length)] = input;
      if (execs % 64 === 0) pool = corpus();
    }
    execs += 1;
    if (performance.now() - lastYield > 200) {
      await yieldToLoop(); // let timers and deferred errors surface
      lastYield = performance.now();
    }
  }
  const seconds = (performance.now() - started) / 1000;
  await t.teardown?.();
  const rssMb = (process.memoryUsage().rss - rssBefore) / 1048576;
  const extra = t.stats?.() ?? '';
  console.log(
    `${t.name.padEnd(28)} ${String(execs).padStart(8)} execs ${seconds.toFixed(1).padStart(5)} s ` +
      `(setup ${Math.round(setupMs)} ms, ${Math.round(execs / seconds)}/s, rss ${rssMb >= 0 ? '+' : ''}${rssMb.toFixed(0)} MB, ` +
      `inputs ${digest.digest('hex').slice(0, 12)}) ok${extra ? `  [${extra}]` : ''}`,
  );
}

async function main(): Promise<void> {
  options = parseOptions(process.argv.slice(2));
  for (const p of [...(options.only ?? []), ...options.skip]) {
    if (!targets.some((t) => matches(t.name, [p]))) usage(`no target named ${p} (see --list)`);
  }
  const selected = targets.filter(
    (t) => (!options.only || matches(t.name, options.only)) && !matches(t.name, options.skip),
  );
  if (options.list) {
    for (const t of targets) console.log(t.name);
    return;
  }
  if (options.input && selected.length !== 1) usage('--input needs exactly one --target');
  const names = new Set<string>();
  for (const t of targets) {
    if (names.has(t.name)) usage(`two targets are named ${t.name}`);
    names.add(t.name);
  }
  const start = performance.now();
  const end = start + options.seconds * 1000;
  let weightLeft = selected.reduce((s, t) => s + (t.weight ?? 1), 0);
  console.log(
    `fuzz: ${selected.length} targets, ` +
      (options.runs !== null ? `${options.runs} runs each` : `${options.seconds} s`) +
      `, seed ${options.seed}`,
  );
  const failed: string[] = [];
  for (const t of selected) {
    const w = t.weight ?? 1;
    const budget = Math.max(50, ((end - performance.now()) * w) / weightLeft);
    weightLeft -= w;
    if (!(await fuzz(t, budget))) failed.push(t.name);
  }
  const took = ((performance.now() - start) / 1000).toFixed(1);
  // Endpoint timers and native handles are not worth waiting for: exit.
  if (failed.length) {
    console.log(`fuzz: FAILED ${failed.join(', ')} (seed ${options.seed}, ${took} s)`);
    process.exit(1);
  }
  console.log(`fuzz: all ${selected.length} targets ok in ${took} s (seed ${options.seed})`);
  process.exit(0);
}

await main();
