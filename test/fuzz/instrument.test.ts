// The edge instrumentation keeps what code computes and counts the
// branches taken: every construct it instruments, run both ways.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { instrument } from './instrument.js';

const SOURCE = `
export function f(x, list) {
  let out = 0;
  if (x > 2) out += 1;
  if (x > 5) { out += 2; } else if (x > 3) out += 4; else { out += 8; }
  for (const v of list) out += v;
  let i = 0;
  while (i < x) i++;
  do { i--; } while (i > 10);
  switch (x % 3) {
    case 0: out += 16; break;
    case 1:
    case 2: out += 32; break;
    default: out += 64;
  }
  try { if (x === 7) throw new Error('seven'); } catch (e) { out += 128; } finally { out += 256; }
  const g = (y) => y > 1 ? y * 2 : -y;
  const h = (y) => ({ y });
  out += g(x) + h(x).y;
  out += (x && 1000) + (0 || x) + (null ?? 3);
  let a = 0; a ||= 5; a &&= a + 1; a ??= 9;
  class C { constructor(v) { this.v = v; } get w() { return this.v + 1; } }
  return out + new C(x).w + a;
}
`;

async function load(code: string): Promise<(x: number, l: number[]) => number> {
  const url = `data:text/javascript;base64,${Buffer.from(code).toString('base64')}`;
  return ((await import(url)) as { f: (x: number, l: number[]) => number }).f;
}

test('instrumented code computes the same, and its counters move with the branches', async () => {
  const plain = await load(SOURCE);
  const r = instrument(SOURCE, 'f.js', 'globalThis.__fzTest');
  assert.ok(r.counters >= 20, `${r.counters} counters`);
  const counters = new Uint8Array(r.counters);
  (globalThis as Record<string, unknown>).__fzTest = counters;
  const inst = await load(r.code);
  const seen = new Set<string>();
  for (let x = 0; x < 12; x += 1) {
    counters.fill(0);
    assert.equal(inst(x, [x, 1]), plain(x, [x, 1]), `f(${x})`);
    seen.add(Buffer.from(counters).toString('hex'));
    assert.ok(
      counters.some((c) => c > 0),
      'the function entry counts',
    );
  }
  // Different branches, different counters.
  assert.ok(seen.size >= 6, `${seen.size} distinct coverage maps`);
  // No newline added: stack traces keep their lines.
  assert.equal(r.code.split('\n').length, SOURCE.split('\n').length);
});

test('the dictionary holds the literals of the code', () => {
  const r = instrument(
    'export const A = 0x53484c51; export const B = "SHLQ"; export const C = 1;',
    'd.js',
  );
  const hex = r.dictionary.map((b) => b.toString('hex'));
  assert.ok(hex.includes('53484c51') && hex.includes('514c4853'), hex.join(' '));
  assert.ok(hex.includes(Buffer.from('SHLQ').toString('hex')));
  assert.ok(!hex.includes('01'), 'trivial constants are left out');
});
