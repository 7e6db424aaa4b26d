// Backward marking through an honest middle (issue 9, hole 1): a hostile
// exit and a hostile guard around an honest middle. The exit seals cells
// with every pattern it can make (a repeated X, also after more cells than
// version 1's repeated-X filter remembered, identical bodies, chosen XOR
// differences, chosen bit flips); the guard looks at what the middle sends
// it and tries to find the pattern. With the version 2 layer it must fail,
// and its guesses stay at chance. The same attacks against a copy of the
// version 1 layer (kept below) succeed: that is what shows the test can
// fail.
import assert from 'node:assert/strict';
import { createCipheriv, randomBytes, type Cipher } from 'node:crypto';
import { test } from 'node:test';
import sodium from 'sodium-native';
import { CELL_LARGE, CELL_SMALL } from '../../src/circuit/cells.js';
import {
  BACKWARD_BODY_AT,
  HOP_KEY_BYTES,
  HopKeys,
  layerBackward,
  sealBackward,
  unwrapBackward,
} from '../../src/circuit/onion.js';
import { ntorClientCreate, ntorClientFinish, ntorServerRespond } from '../../src/crypto/ntor.js';

const S = CELL_LARGE;

/** A real 3-hop key setup: one ntor handshake per hop, as CREATE and EXTEND run it. */
function threeHops(): { client: HopKeys[]; relays: HopKeys[]; material: Buffer[] } {
  const client: HopKeys[] = [];
  const relays: HopKeys[] = [];
  const material: Buffer[] = [];
  for (let i = 0; i < 3; i += 1) {
    const id = randomBytes(32);
    const b = randomBytes(32);
    const B = Buffer.alloc(32);
    sodium.crypto_scalarmult_base(B, b);
    const c = ntorClientCreate(id, B);
    const r = ntorServerRespond(id, b, B, c.message, HOP_KEY_BYTES);
    assert.ok(r);
    const k = ntorClientFinish(c.state, r.message, HOP_KEY_BYTES);
    assert.ok(k && k.equals(r.keys));
    material.push(Buffer.from(k));
    client.push(new HopKeys(k));
    relays.push(new HopKeys(r.keys));
  }
  return { client, relays, material };
}

/**
 * The honest middle as each version runs it: `forward(cell)` adds its
 * backward layer in place, or returns false when it drops the cell.
 */
interface Middle {
  forward(cell: Buffer): boolean;
}

/** Version 2: the layer of src/circuit/onion.ts, keyed by the middle's own counter. */
function middleV2(keys: HopKeys): Middle {
  let counter = 0;
  return {
    forward(cell) {
      counter += 1;
      return layerBackward(keys, counter, cell, 0, cell.length);
    },
  };
}

/**
 * Version 1, kept here to show the attacks worked on it (main at 302afdd,
 * onion.ts layerBackward and the relay's 1024-entry repeated-X filter):
 * X' = AES(Kx, X), B' = B ^ Z(Kb, X' || 0^8)[0, S-16).
 */
function middleV1(material: Buffer): Middle {
  const kb = Buffer.from(material.subarray(32, 64));
  const prp: Cipher = createCipheriv('aes-128-ecb', material.subarray(64, 80), null);
  prp.setAutoPadding(false);
  const seen = new Set<number>();
  const ring: number[] = [];
  let pos = 0;
  const nonce = Buffer.alloc(24);
  return {
    forward(cell) {
      const x = cell.readUIntBE(0, 6);
      if (seen.has(x)) return false;
      if (ring.length < 1024) ring.push(x);
      else {
        seen.delete(ring[pos]!);
        ring[pos] = x;
        pos = (pos + 1) % 1024;
      }
      seen.add(x);
      prp.update(cell.subarray(0, 16)).copy(nonce);
      nonce.fill(0, 16);
      nonce.copy(cell, 0, 0, 16);
      const b = cell.subarray(16);
      sodium.crypto_stream_xchacha20_xor_ic(b, Buffer.from(b), nonce, 0, kb);
      return true;
    },
  };
}

/**
 * Version 1's vector onion-backward-v1 (docs/protocol.md at 302afdd): the
 * copy above reproduces main's layer exactly.
 */
const V1_HOP1_MATERIAL = Buffer.from(Array.from({ length: 80 }, (_, i) => i + 1));
const V1_ORIGIN_CELL =
  '101112131415161718191a1b1c1d1e1f052b0dfeeffdd5f280977eb20ca1d0f1ba28f34f18f4e06b8dcfee94909c723d7558f56b4a2195a5e5a535bbb15fd5525bbae98641e467710d51009a6a05085902afc08b8846bcd5e9ab688ac362ee8c306df9ddec2f50194dc597e77b6dce25e0e78f2fd140cfc713bbf60c78bfd6948e3933fb52099350e10eeda1e226d5d5a09986d63c185e2ff3349c85359e25aa248ebb890c2e7279ce7d8f1dcd376f7c5cb6b96ab92cef0b4ec00a7dc8bf523c715b7b0c9d0f59e3fbdfbf78a2cb9e5e854f99bd8a222d2a980b5ec16f78c55c6b0e81cd37a04502e8b8eb4185c2c3ae2a58c7da7ab8e8b4f7da97e7ccc17e4de9b56a76666f90b82103cd98a93103d261f5e85dfd08d4c846a409bd75129ca97001615558d19c61c32f3899d93e939870f07da197e6464c612ee8c9f58c7235aec7100911c91138c35d24cec505f9b026acc2b4db2cd5bd627c730d4fc20e3969e12e9fc40508137a76ad903e18959e5477c59baec64c88af368e32db83977585211c0abe030b2d7339abc233b00e22';
const V1_CELL =
  '62a932da074843bc254ad7d89dd77c75b22a9de197d52a4dbc3db65b9e80b0a66ce0189de2cb40e13630b52839262b91f20fc0449c551a0eb792d1004326cbbad39b1d777cbf1296b8ddec76dd69cb89308e6188f132f836bb36211fb49cfad99956c4685c48194b0ca567740ef40672c4b41157935f95e8200f9feeef38e136b9dff1cfd78f422ea88502276776184dc9bdc8b22978e9c38f55b94bf7f428bf60bf31650d66725957a4a5adce5fb2fb0bcc9be5a91b50e8893d62d00f0b3729ac3afd195455c9d70a72016be10b44931eca968600f05cd3caf41f96c9d78212cfa01e43e93cd64c662290e23e1ece09c02e98205ca86f7ef7e90b70a41fb2842fdea57d3aa2ffea4f7056ecdc2d3cf0401afccd762987df8f2869ccabefa1f7df4898467e4305ec370a9e3ae3e43d2456c80b797730b3fd7fb5710d2831bbcf09de339c18f9d09a999d2449451edb00d4da94b1f34eddd551b1e4f02411153310271d1c2690b9a575ab473a5cd5a8d912c1a6271a9756b4e673871a5203148818f2090c807f7186160bf4184ee6514e';

test("the version 1 layer kept in this file is main's (its vector onion-backward-v1)", () => {
  const cell = Buffer.from(V1_ORIGIN_CELL, 'hex');
  assert.ok(middleV1(V1_HOP1_MATERIAL).forward(cell));
  assert.equal(cell.toString('hex'), V1_CELL);
});

/** What the hostile exit sends: cells it sealed, then patterned at will. */
function sealed(exit: HopKeys, seq: number, size = S): Buffer {
  const cell = Buffer.alloc(size);
  sealBackward(exit, seq, Buffer.from('\x01\x00\x04data'), size, cell);
  return cell;
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.alloc(Math.min(a.length, b.length));
  for (let i = 0; i < out.length; i += 1) out[i] = a[i]! ^ b[i]!;
  return out;
}

/**
 * The guard's detector for a pair of middle outputs (o1, o2) that the exit
 * made from inputs with XOR difference `delta` (over the whole cell):
 * equal headers, equal bodies, or the chosen difference showing through at
 * any offset a layer could shift it to (0 as in version 1, 16 as the
 * version 2 layer shifts the cell). Every test below counts on it.
 */
function guardSees(o1: Buffer, o2: Buffer, delta: Buffer): boolean {
  if (o1.subarray(0, 16).equals(o2.subarray(0, 16))) return true;
  if (o1.subarray(16).equals(o2.subarray(16))) return true;
  const d = xor(o1, o2);
  for (const shift of [0, 16]) {
    // The difference in the body part, where the exit put it.
    const want = delta.subarray(16, 16 + 256);
    const got = d.subarray(16 + shift, 16 + shift + 256);
    if (got.equals(want)) return true;
  }
  return false;
}

/** Run one attack against a middle; true when the guard detects the mark. */
function markingAttack(middle: Middle, exit: HopKeys, kind: string, gap: number): boolean {
  let seq = 1;
  const first = sealed(exit, seq++);
  let second: Buffer;
  switch (kind) {
    case 'replay': // the same cell again, byte for byte
      second = Buffer.from(first);
      break;
    case 'difference': {
      // The same X, B xor a chosen difference (a covert channel).
      second = Buffer.from(first);
      for (let i = 40; i < 40 + 300; i += 1) second[i]! ^= (i * 37) & 0xff;
      break;
    }
    case 'bitflip': // the same X, three chosen bits flipped
      second = Buffer.from(first);
      second[100]! ^= 0x01;
      second[500]! ^= 0x80;
      second[S - 17]! ^= 0x10;
      break;
    case 'same-x': {
      // A fresh seal (another body) that reuses the first cell's X.
      second = sealed(exit, 2);
      first.copy(second, 0, 0, 16);
      break;
    }
    default:
      throw new Error(kind);
  }
  const delta = xor(first, second);
  const out1 = Buffer.from(first);
  assert.ok(middle.forward(out1));
  // `gap` other cells in between (more than version 1's filter remembered).
  for (let i = 0; i < gap; i += 1) assert.ok(middle.forward(sealed(exit, 100 + i)));
  const out2 = Buffer.from(second);
  if (!middle.forward(out2)) return false; // dropped: no mark reaches the guard
  return guardSees(out1, out2, delta);
}

const KINDS = ['replay', 'same-x', 'difference', 'bitflip'];

test('version 1 (kept in this file): a repeated X after 1024 other cells marks cells through the honest middle', () => {
  const { relays, material } = threeHops();
  for (const kind of KINDS) {
    const middle = middleV1(material[1]!);
    assert.equal(markingAttack(middle, relays[2]!, kind, 1100), true, `${kind} detected on v1`);
  }
  // The filter did catch a repeat within 1024 cells: the attack needs the gap.
  assert.equal(markingAttack(middleV1(material[1]!), relays[2]!, 'replay', 10), false);
});

test('version 2: no pattern the exit makes survives the honest middle, after any gap', () => {
  const { client, relays } = threeHops();
  const middle = middleV2(relays[1]!);
  for (const kind of KINDS) {
    for (const gap of [0, 1, 1023, 1024, 1100, 3000]) {
      assert.equal(markingAttack(middle, relays[2]!, kind, gap), false, `${kind} gap ${gap}`);
    }
  }
  // The middle still forwards what it gets: the client opens a cell the
  // exit sealed and both hops layered.
  const cell = sealed(relays[2]!, 77);
  assert.ok(middle.forward(cell));
  assert.ok(layerBackward(relays[0]!, 1, cell, 0, S));
  assert.equal(unwrapBackward(client, 2, cell, 0, S), 77);
  assert.equal(
    cell.subarray(BACKWARD_BODY_AT, BACKWARD_BODY_AT + 7).toString('latin1'),
    '\x01\x00\x04data',
  );
});

test('version 2: one cell repeated 8 times, 1024 cells apart, reaches the guard as 8 unrelated cells', () => {
  const { relays, material } = threeHops();
  const run = (middle: Middle) => {
    const template = sealed(relays[2]!, 1, CELL_SMALL);
    const other = randomBytes(CELL_SMALL);
    const headers = new Set<string>();
    const bodies = new Set<string>();
    let forwarded = 0;
    for (let r = 0; r < 8; r += 1) {
      const cell = Buffer.from(template);
      if (middle.forward(cell)) {
        forwarded += 1;
        headers.add(cell.toString('hex', 0, 16));
        bodies.add(cell.toString('hex', 16));
      }
      // 1024 other cells (distinct X) in between: more than version 1's
      // filter remembered.
      for (let g = 0; g < 1024; g += 1) {
        other.writeUInt32BE(r * 2048 + g, 0);
        middle.forward(Buffer.from(other));
      }
    }
    return { forwarded, headers: headers.size, bodies: bodies.size };
  };
  assert.deepEqual(run(middleV2(relays[1]!)), { forwarded: 8, headers: 8, bodies: 8 });
  // Version 1 let each repeat through, and the guard saw the same header
  // and body every time.
  assert.deepEqual(run(middleV1(material[1]!)), { forwarded: 8, headers: 1, bodies: 1 });
});

/**
 * The guard's score for a pair of outputs: how many of the 2048 bits of
 * the chosen difference show up in o1 ^ o2, at the better of the two
 * offsets (4096 when the headers are equal). Around 1024 means nothing.
 */
function score(o1: Buffer, o2: Buffer, delta: Buffer): number {
  if (o1.subarray(0, 16).equals(o2.subarray(0, 16))) return 4096;
  const d = xor(o1, o2);
  let best = 0;
  for (const shift of [0, 16]) {
    let same = 0;
    for (let i = 0; i < 256; i += 1) {
      let x = ~(d[16 + shift + i]! ^ delta[16 + i]!) & 0xff;
      while (x) {
        same += x & 1;
        x >>= 1;
      }
    }
    best = Math.max(best, same);
  }
  return best;
}

test('a distinguisher over many cells: the guard guesses which pairs the exit marked at chance', (t) => {
  const { relays, material } = threeHops();
  // Each trial: the exit flips a secret coin; on heads it sends a cell and
  // a marked copy (same X, a chosen difference), on tails two unrelated
  // seals, 1024 other cells apart (for version 1's filter). Two guards
  // guess heads when the score passes their threshold: a balanced one at
  // the median score of an unrelated pair (it says heads about half the
  // time whatever it sees), and a strict one at 4 standard deviations.
  const trials = 400;
  const strict = 1115;
  const filler = randomBytes(S);
  const mark = Buffer.alloc(S);
  mark.fill(0x5a, 40, 40 + 256);
  // The balanced guard calibrates its threshold on unrelated random pairs:
  // the median of their scores.
  const calibration = Array.from({ length: 301 }, () =>
    score(randomBytes(S), randomBytes(S), mark),
  ).sort((a, b) => a - b);
  const balanced = calibration[150]!;
  let gapX = 0;
  const play = (middle: Middle) => {
    const coins = randomBytes(trials);
    const right = { balanced: 0, strict: 0 };
    let saidHeads = 0;
    for (let t = 0; t < trials; t += 1) {
      const heads = (coins[t]! & 1) === 1;
      const first = sealed(relays[2]!, 2 * t + 1);
      let second: Buffer;
      if (heads) second = xor(first, mark);
      else second = sealed(relays[2]!, 2 * t + 2);
      const o1 = Buffer.from(first);
      const o2 = Buffer.from(second);
      middle.forward(o1);
      for (let g = 0; g < 1024; g += 1) {
        filler.writeUIntBE((gapX += 1), 0, 6);
        middle.forward(Buffer.from(filler));
      }
      // The guard tests for its mark, the difference it agreed with the exit.
      const s = middle.forward(o2) ? score(o1, o2, mark) : 0;
      if (s > balanced) saidHeads += 1;
      if (s > balanced === heads) right.balanced += 1;
      if (s > strict === heads) right.strict += 1;
    }
    return {
      balanced: right.balanced / trials,
      strict: right.strict / trials,
      saidHeads: saidHeads / trials,
    };
  };
  const v2 = play(middleV2(relays[1]!));
  // Chance is 0.5; with 400 trials the standard deviation is 0.025.
  assert.ok(v2.balanced > 0.4 && v2.balanced < 0.6, `version 2, balanced guard: ${v2.balanced}`);
  assert.ok(v2.strict > 0.4 && v2.strict < 0.6, `version 2, strict guard: ${v2.strict}`);
  assert.ok(v2.saidHeads > 0.3 && v2.saidHeads < 0.7, `the balanced guard guessed both ways`);
  const v1 = play(middleV1(material[1]!));
  t.diagnostic(
    `guard accuracy, version 2: ${JSON.stringify(v2)}; version 1: ${JSON.stringify(v1)}`,
  );
  assert.ok(v1.strict > 0.99, `version 1, strict guard: ${v1.strict}`);
});
