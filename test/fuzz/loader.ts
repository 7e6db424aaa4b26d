/**
 * An ESM loader hook (module.register) that instruments the code under
 * test for the coverage-guided fuzzer (./instrument.ts): every module whose
 * URL contains one of the `include` strings. Each instrumented module asks
 * the fuzzer's coverage map for its counters when it is evaluated, and
 * gives it its dictionary; without a fuzzer (the global absent) it counts
 * into an array of its own, unread.
 */
import { fileURLToPath } from 'node:url';
import { instrument } from './instrument.js';

/** The name of the coverage map on globalThis (see ./coverage.ts). */
export const COVERAGE_GLOBAL = '__shallotFuzzCoverage';

let include: string[] = ['/dist/src/', '/dist/relay/', '/dist/exit/', '/dist/client/'];

export function initialize(data: { include?: string[] } | undefined): void {
  if (data?.include?.length) include = data.include;
}

interface LoadResult {
  format?: string | null;
  source?: string | ArrayBuffer | Uint8Array | null;
  shortCircuit?: boolean;
}
type NextLoad = (url: string, context: unknown) => Promise<LoadResult>;

export async function load(url: string, context: unknown, nextLoad: NextLoad): Promise<LoadResult> {
  const result = await nextLoad(url, context);
  if (
    result.format !== 'module' ||
    result.source === null ||
    result.source === undefined ||
    !url.startsWith('file:') ||
    !url.endsWith('.js') ||
    !include.some((p) => url.includes(p))
  ) {
    return result;
  }
  const code =
    typeof result.source === 'string'
      ? result.source
      : Buffer.from(result.source as ArrayBuffer).toString('utf8');
  const file = fileURLToPath(url);
  const r = instrument(code, file);
  const dict = JSON.stringify(r.dictionary.map((b) => b.toString('hex')));
  const prologue =
    `const __fz = globalThis.${COVERAGE_GLOBAL}?.register(${JSON.stringify(url)}, ${r.counters}, ${dict})` +
    ` ?? new Uint8Array(${r.counters});`;
  // On the first line: line numbers in stack traces stay right.
  return { ...result, source: prologue + r.code };
}
