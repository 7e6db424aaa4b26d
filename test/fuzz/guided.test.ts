// The coverage-guided fuzzer: a short run over every target (from the
// stored corpora), and what guidance buys: a fixture target whose crash
// random mutation does not reach in the same number of inputs.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const GUIDED = path.join(here, 'guided.js');
const MAZE = path.join(here, 'fixtures', 'maze.js');

function fuzz(args: string[]): { code: number | null; out: string } {
  const r = spawnSync(process.execPath, [GUIDED, ...args], { encoding: 'utf8', timeout: 180_000 });
  if (r.error) throw r.error;
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

test('guided: a short run reports inputs, exec/s, corpus and the blocks reached', () => {
  // (npm run test:fuzz then runs every target for 50 s from the stored corpora.)
  const r = fuzz(['--target', 'link/decodeAuth,circuit/decodeExtend', '--runs', '3000']);
  assert.equal(r.code, 0, r.out);
  for (const name of ['link/decodeAuth', 'circuit/decodeExtend']) {
    const m = new RegExp(
      `^${name.replace(/[/.]/g, '\\$&')} +(\\d+) inputs .* (\\d+) exec/s +corpus (\\d+) .*blocks (\\d+)/(\\d+) .* ok`,
      'm',
    ).exec(r.out);
    assert.ok(m, `${name} ran\n${r.out}`);
    assert.equal(Number(m[1]), 3000, 'inputs');
    assert.ok(Number(m[3]) > 0, 'a corpus');
    // The decoders' code is instrumented: they reach blocks of it.
    assert.ok(Number(m[4]) > 0 && Number(m[4]) <= Number(m[5]), `blocks ${m[4]}/${m[5]}`);
  }
});

test('guided: coverage feedback reaches a crash that random mutation does not', () => {
  const args = [
    '--targets-module',
    MAZE,
    '--cover',
    '/fixtures/',
    '--runs',
    '150000',
    '--seed',
    '3',
  ];
  const random = fuzz([...args, '--random']);
  assert.equal(random.code, 0, `random mutation solved the maze:\n${random.out}`);
  const guided = fuzz(args);
  assert.equal(guided.code, 1, guided.out);
  assert.match(guided.out, /FAIL fixture\/maze: maze solved/);
  assert.match(guided.out, /input \(\d+ bytes\): 53484c5a5eedf00d/);
});

test('guided: --input replays one input; a bad target name is a usage error', () => {
  const ok = fuzz(['--target', 'link/decodeClose', '--input', '0205']);
  assert.equal(ok.code, 0, ok.out);
  assert.match(ok.out, /the input passes/);
  const bad = fuzz(['--target', 'nonexistent/target']);
  assert.equal(bad.code, 2, bad.out);
});
