// A short run of the fuzzer (3 s over every target), and its determinism:
// the same --seed gives the same inputs. The full run is
// `node dist/test/fuzz/run.js --seconds 60`.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const RUN = path.join(path.dirname(fileURLToPath(import.meta.url)), 'run.js');

function fuzz(args: string[]): { code: number | null; out: string } {
  const r = spawnSync(process.execPath, [RUN, ...args], { encoding: 'utf8', timeout: 120_000 });
  if (r.error) throw r.error;
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

test('every fuzz target holds for 3 seconds', () => {
  const list = fuzz(['--list']);
  assert.equal(list.code, 0, list.out);
  const names = list.out.trim().split('\n');
  assert.ok(names.length >= 10, 'targets are registered');
  const r = fuzz(['--seconds', '3', '--seed', String(Date.now() % 100_000)]);
  assert.equal(r.code, 0, r.out);
  for (const name of names) {
    assert.match(r.out, new RegExp(`^${name.replace(/[/.]/g, '\\$&')} .* ok`, 'm'), `${name} ran`);
  }
});

test('the same seed gives the same inputs; another seed other inputs', () => {
  const digests = (seed: number): string[] => {
    const r = fuzz([
      '--runs',
      '500',
      '--seed',
      String(seed),
      '--target',
      'link/decodeAuth,direct/decodeAddresses,circuit/decodeExtend',
    ]);
    assert.equal(r.code, 0, r.out);
    return [...r.out.matchAll(/inputs ([0-9a-f]{12})/g)].map((m) => m[1] as string);
  };
  const a = digests(7);
  assert.equal(a.length, 3);
  assert.deepEqual(digests(7), a);
  assert.notDeepEqual(digests(8), a);
});

test('--input runs one input on one target; a bad target name is a usage error', () => {
  const ok = fuzz(['--target', 'link/decodeClose', '--input', '0205']);
  assert.equal(ok.code, 0, ok.out);
  assert.match(ok.out, /the input passes/);
  const bad = fuzz(['--target', 'nonexistent/target']);
  assert.equal(bad.code, 2, bad.out);
});
