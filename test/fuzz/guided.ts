/**
 * The coverage-guided fuzzer (./engine.ts) over every target of the
 * registry, starting from the corpora stored in test/fuzz/corpus/ and the
 * protocol's test vectors.
 *
 *   node dist/test/fuzz/guided.js [--seconds 60 | --runs N [--target-seconds S]]
 *       [--seed 1] [--target A,B] [--skip A,B] [--list] [--random] [--save]
 *       [--no-corpus] [--corpus DIR] [--json FILE] [--input HEX --target NAME]
 *       [--progress S]
 *
 * --seconds S splits S over the targets by weight; --runs N stops each
 * target after N inputs (and --target-seconds S after S seconds, whichever
 * comes first). --random turns the coverage feedback off (the random
 * runner's behaviour, coverage still measured: for comparisons). --save
 * writes each target's minimized corpus back to its directory. --progress S
 * prints the running target's count every S seconds (default 60 with
 * --runs, off otherwise); SIGINT or SIGTERM prints the figures so far
 * (finished targets and the running one) before exiting with 130 or 143.
 *
 * Per target it prints inputs, exec/s, corpus size and the blocks of the
 * project's code (dist/src, relay, exit, client) reached, of those in the functions that ran.
 * Exit status 0 when every target held; 1 with the target, the reason and
 * the failing input in hex otherwise; 2 on bad arguments.
 */
import { writeFileSync } from 'node:fs';
import { register } from 'node:module';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { CORPUS_ROOT, protocolVectorInputs, readCorpus, writeCorpus } from './corpus.js';
import { CoverageMap } from './coverage.js';
import { currentInput, fuzzGuided, TargetFailure, type EngineResult } from './engine.js';
import { Rng } from './rng.js';
import { FuzzFailure, type FuzzTarget } from './target.js';

/** Bounds of one target's stored corpus (the repository keeps them small). */
const SAVE_MAX_FILES = 48;
const SAVE_MAX_BYTES = 16 * 1024;

interface Options {
  seconds: number | null;
  targetSeconds: number | null;
  runs: number | null;
  seed: number;
  only: string[] | null;
  skip: string[];
  list: boolean;
  random: boolean;
  save: boolean;
  useCorpus: boolean;
  corpus: string;
  json: string | null;
  input: Buffer | null;
  progress: number | null;
  /** Module URLs containing one of these are instrumented. */
  cover: string[];
  /** A module exporting `targets` to fuzz instead of the registry (tests). */
  targetsModule: string | null;
}

function usage(message: string): never {
  console.error(`fuzz: ${message}`);
  console.error(
    'usage: guided.js [--seconds S | --runs N [--target-seconds S]] [--seed N] [--target A,B] ' +
      '[--skip A,B] [--list] [--random] [--save] [--no-corpus] [--corpus DIR] [--json FILE] [--input HEX] ' +
      '[--progress S]',
  );
  process.exit(2);
}

function parseOptions(argv: string[]): Options {
  const o: Options = {
    seconds: null,
    targetSeconds: null,
    runs: null,
    seed: 1,
    only: null,
    skip: [],
    list: false,
    random: false,
    save: false,
    useCorpus: true,
    corpus: CORPUS_ROOT,
    json: null,
    input: null,
    progress: null,
    cover: ['/dist/src/', '/dist/relay/', '/dist/exit/', '/dist/client/'],
    targetsModule: null,
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
    else if (a === '--target-seconds') o.targetSeconds = number(0.1);
    else if (a === '--runs') o.runs = Math.floor(number(1));
    else if (a === '--seed') o.seed = Math.floor(number(0)) >>> 0;
    else if (a === '--target') o.only = value().split(',').filter(Boolean);
    else if (a === '--skip') o.skip = value().split(',').filter(Boolean);
    else if (a === '--list') o.list = true;
    else if (a === '--random') o.random = true;
    else if (a === '--save') o.save = true;
    else if (a === '--no-corpus') o.useCorpus = false;
    else if (a === '--corpus') o.corpus = value();
    else if (a === '--json') o.json = value();
    else if (a === '--progress') o.progress = number(0);
    else if (a === '--cover') o.cover = value().split(',').filter(Boolean);
    else if (a === '--targets-module') o.targetsModule = value();
    else if (a === '--input') {
      const hex = value();
      if (!/^([0-9a-fA-F]{2})*$/.test(hex)) usage('--input needs hex bytes');
      o.input = Buffer.from(hex, 'hex');
    } else usage(`unknown argument ${a}`);
  }
  if (o.seconds === null && o.runs === null && o.targetSeconds === null) o.seconds = 60;
  if (o.seconds !== null && o.targetSeconds !== null) usage('--seconds or --target-seconds');
  return o;
}

/** A name matches a pattern equal to it or to a prefix ending in '/'. */
function matches(name: string, patterns: string[]): boolean {
  return patterns.some((p) => name === p || (p.endsWith('/') && name.startsWith(p)));
}

let options: Options;

function report(target: string, input: Buffer, e: unknown): void {
  const expected = e instanceof FuzzFailure;
  console.log(`FAIL ${target}: ${expected ? e.message : 'threw'}`);
  if (!expected) console.log(e instanceof Error ? (e.stack ?? e.message) : String(e));
  console.log(`input (${input.length} bytes): ${input.toString('hex') || '(empty)'}`);
  console.log(
    `reproduce: node dist/test/fuzz/guided.js --target ${target} --input ${input.toString('hex') || "''"}` +
      ` (a stateful target may need the preceding inputs: --seed ${options.seed} without --input)`,
  );
}

function fatal(e: unknown): never {
  if (currentInput) report(currentInput.target, currentInput.input, e);
  else console.log('FAIL (outside any target):', e);
  process.exit(1);
}
process.on('uncaughtException', fatal);
process.on('unhandledRejection', fatal);

function kb(n: number): string {
  return n < 1024 ? `${n} B` : `${(n / 1024).toFixed(1)} KB`;
}

function line(r: EngineResult): string {
  const rate = Math.round(r.inputs / Math.max(r.seconds, 1e-3));
  return (
    `${r.name.padEnd(28)} ${String(r.inputs).padStart(9)} inputs ${r.seconds.toFixed(1).padStart(6)} s ` +
    `${String(rate).padStart(6)} exec/s  corpus ${r.corpus} (${r.found} found, ${kb(r.corpusBytes)})  ` +
    `blocks ${r.blocks}/${r.blocksInModules} in ${r.modules} modules, features ${r.features} ok` +
    (r.stats ? `  [${r.stats}]` : '')
  );
}

async function main(): Promise<void> {
  options = parseOptions(process.argv.slice(2));
  // Instrument the code under test as it loads: the targets come after.
  const coverage = new CoverageMap();
  coverage.install();
  if (!options.list && !options.input) {
    register('./loader.js', { parentURL: import.meta.url, data: { include: options.cover } });
  }
  const targetsUrl = options.targetsModule
    ? pathToFileURL(path.resolve(options.targetsModule)).href
    : './registry.js';
  const { targets } = (await import(targetsUrl)) as { targets: FuzzTarget[] };
  if (options.list) {
    for (const t of targets) console.log(t.name);
    return;
  }
  for (const p of [...(options.only ?? []), ...options.skip]) {
    if (!targets.some((t) => matches(t.name, [p]))) usage(`no target named ${p} (see --list)`);
  }
  const names = new Set<string>();
  for (const t of targets) {
    if (names.has(t.name)) usage(`two targets are named ${t.name}`);
    names.add(t.name);
  }
  const selected = targets.filter(
    (t) => (!options.only || matches(t.name, options.only)) && !matches(t.name, options.skip),
  );
  if (options.input) {
    if (selected.length !== 1) usage('--input needs exactly one --target');
    const t = selected[0]!;
    await t.seeds();
    try {
      const r = t.run(options.input, new Rng(options.seed));
      if (r instanceof Promise) await r;
    } catch (e) {
      report(t.name, options.input, e);
      process.exit(1);
    }
    console.log(`${t.name}: the input passes`);
    process.exit(0);
  }

  const vectors = protocolVectorInputs();
  const start = performance.now();
  const end = options.seconds !== null ? start + options.seconds * 1000 : Infinity;
  let weightLeft = selected.reduce((s, t) => s + (t.weight ?? 1), 0);
  console.log(
    `fuzz (coverage-guided${options.random ? ' off: random' : ''}): ${selected.length} targets, ` +
      [
        options.runs !== null ? `${options.runs} inputs each` : '',
        options.seconds !== null ? `${options.seconds} s` : '',
        options.targetSeconds !== null ? `at most ${options.targetSeconds} s each` : '',
      ]
        .filter(Boolean)
        .join(', ') +
      `, seed ${options.seed}`,
  );
  const results: EngineResult[] = [];
  const failed: string[] = [];
  // The running target's count, for progress lines and a report when stopped.
  let running: { name: string; inputs: number; seconds: number } | null = null;
  const progressMs =
    options.progress !== null ? options.progress * 1000 : options.runs !== null ? 60_000 : 0;
  const stopped = (signal: NodeJS.Signals, code: number): void => {
    for (const r of results) console.log(line(r));
    if (running) {
      const rate = Math.round(running.inputs / Math.max(running.seconds, 1e-3));
      console.log(
        `${running.name.padEnd(28)} ${String(running.inputs).padStart(9)} inputs ` +
          `${running.seconds.toFixed(1).padStart(6)} s ${String(rate).padStart(6)} exec/s  (stopped)`,
      );
    }
    const total = results.reduce((s, r) => s + r.inputs, 0) + (running?.inputs ?? 0);
    console.log(
      `fuzz: stopped by ${signal} after ${((performance.now() - start) / 1000).toFixed(1)} s: ` +
        `${results.length} targets done, ${total} inputs, no failure (seed ${options.seed})`,
    );
    process.exit(code);
  };
  process.once('SIGINT', () => stopped('SIGINT', 130));
  process.once('SIGTERM', () => stopped('SIGTERM', 143));
  for (const t of selected) {
    const w = t.weight ?? 1;
    const budgetMs =
      options.targetSeconds !== null
        ? options.targetSeconds * 1000
        : end === Infinity
          ? Infinity
          : Math.max(50, ((end - performance.now()) * w) / weightLeft);
    weightLeft -= w;
    const stored = options.useCorpus ? readCorpus(options.corpus, t.name) : [];
    let printedAt = 0;
    try {
      const r = await fuzzGuided(t, {
        coverage,
        seed: options.seed,
        runs: options.runs,
        budgetMs,
        initial: [...stored, ...(options.useCorpus ? vectors : [])],
        guided: !options.random,
        minimize: options.save ? { maxFiles: SAVE_MAX_FILES, maxBytes: SAVE_MAX_BYTES } : undefined,
        progressMs: 2000,
        progress: (inputs, seconds) => {
          running = { name: t.name, inputs, seconds };
          if (!progressMs || seconds * 1000 - printedAt < progressMs) return;
          printedAt = seconds * 1000;
          const rate = Math.round(inputs / Math.max(seconds, 1e-3));
          const eta =
            options.runs !== null && rate > 0
              ? `, about ${Math.ceil((options.runs - inputs) / rate / 60)} min left`
              : '';
          console.error(
            `fuzz: ${t.name}: ${inputs} inputs in ${seconds.toFixed(0)} s (${rate}/s${eta})`,
          );
        },
      });
      running = null;
      await t.teardown?.();
      results.push(r);
      let saved = '';
      if (r.minimized) {
        writeCorpus(options.corpus, t.name, r.minimized);
        const bytes = r.minimized.reduce((s, b) => s + b.length, 0);
        saved = `  saved ${r.minimized.length} files, ${kb(bytes)}`;
      }
      console.log(line(r) + saved);
    } catch (e) {
      if (!(e instanceof TargetFailure)) throw e;
      report(e.target, e.input, e.cause);
      failed.push(t.name);
      await t.teardown?.();
    }
  }
  if (options.json) {
    const plain = results.map(({ minimized: _, ...r }) => r);
    writeFileSync(options.json, `${JSON.stringify(plain, null, 2)}\n`);
  }
  const took = ((performance.now() - start) / 1000).toFixed(1);
  if (failed.length) {
    console.log(`fuzz: FAILED ${failed.join(', ')} (seed ${options.seed}, ${took} s)`);
    process.exit(1);
  }
  const total = results.reduce((s, r) => s + r.inputs, 0);
  console.log(
    `fuzz: all ${results.length} targets ok in ${took} s, ${total} inputs (seed ${options.seed})`,
  );
  process.exit(0);
}

await main();
