// The onion layers: a client, relays and an exit in one process, driven
// through the pure functions of src/circuit/onion.ts.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import sodium from 'sodium-native';
import {
  BACKWARD_BODY_AT,
  BACKWARD_TAIL_BYTES,
  backwardCapacity,
  FORWARD_HOP_OVERHEAD,
  forwardCapacity,
  HOP_KEY_BYTES,
  HopKeys,
  layerBackward,
  PaddingSource,
  peelForward,
  sealBackward,
  SEQ_FLAG_FOR_THIS_HOP,
  unwrapBackward,
  wrapForward,
} from '../../src/circuit/onion.js';
import { ReplayWindow, REPLAY_WINDOW_SIZE } from '../../src/circuit/replay-window.js';

const S = 1410;

function circuit(n: number): { client: HopKeys[]; relays: HopKeys[] } {
  const material = Array.from({ length: n }, () => randomBytes(HOP_KEY_BYTES));
  return {
    client: material.map((m) => new HopKeys(m)),
    relays: material.map((m) => new HopKeys(m)),
  };
}

/** Pass a forward cell through the relays; returns each hop's input and the exit's plaintext. */
function forward(
  relays: HopKeys[],
  cell: Buffer,
): { seen: Buffer[]; plain: Buffer | null; seqs: number[] } {
  const seen: Buffer[] = [];
  const seqs: number[] = [];
  let cur = cell;
  for (const r of relays) {
    seen.push(Buffer.from(cur));
    assert.equal(cur.length, S, 'cell size is constant along the circuit');
    const scratch = Buffer.alloc(S + 8);
    const seq = peelForward(r, cur, 0, S, scratch);
    if (seq === 0) return { seen, plain: null, seqs };
    seqs.push(seq);
    cur = Buffer.from(scratch.subarray(8, 8 + S));
  }
  return { seen, plain: cur, seqs };
}

for (const n of [1, 2, 3, 4]) {
  test(`forward through ${n} hop(s): every hop verifies, the last reads the payload`, () => {
    const { client, relays } = circuit(n);
    const pad = new PaddingSource();
    for (let k = 0; k < 20; k += 1) {
      const payload = randomBytes(
        k === 0 ? forwardCapacity(S, n) : 1 + ((k * 97) % forwardCapacity(S, n)),
      );
      const cell = Buffer.alloc(S);
      const seqs = relays.map((_, i) => 1000 * i + k + 1);
      wrapForward(client, seqs, payload, S, cell, pad);
      const r = forward(relays, cell);
      assert.ok(r.plain, 'all tags verify');
      assert.deepEqual(r.seqs, seqs, 'each hop sees its own sequence number');
      assert.deepEqual(r.plain.subarray(0, payload.length), payload);
    }
  });
}

test('a relay that alters a cell it forwards is caught by the next hop (no tagging)', () => {
  const { client, relays } = circuit(3);
  const cell = Buffer.alloc(S);
  wrapForward(client, [1, 1, 1], Buffer.from('GET / HTTP/1.1'), S, cell, new PaddingSource());
  const s1 = Buffer.alloc(S + 8);
  assert.ok(peelForward(relays[0]!, cell, 0, S, s1) > 0);
  for (const pos of [0, 30, 100, 700, S - 1]) {
    const tagged = Buffer.from(s1.subarray(8, 8 + S));
    tagged[pos]! ^= 0x01;
    assert.equal(peelForward(relays[1]!, tagged, 0, S, Buffer.alloc(S + 8)), 0, `flip at ${pos}`);
  }
  // The untouched cell still goes through.
  const next = Buffer.from(s1.subarray(8, 8 + S));
  assert.ok(peelForward(relays[1]!, next, 0, S, Buffer.alloc(S + 8)) > 0);
});

test('hops see unrelated bytes: no field is common to two hops', () => {
  const { client, relays } = circuit(3);
  const cell = Buffer.alloc(S);
  wrapForward(client, [5, 5, 5], Buffer.alloc(100), S, cell, new PaddingSource());
  const { seen } = forward(relays, cell);
  for (let a = 0; a < seen.length; a += 1) {
    for (let b = a + 1; b < seen.length; b += 1) {
      let same = 0;
      for (let i = 0; i < S; i += 1) if (seen[a]![i] === seen[b]![i]) same += 1;
      assert.ok(same < S / 64, `hop ${a} and ${b} share ${same} byte positions`);
    }
  }
});

test('the last hop cannot tell padding from filler (no zero run to count hops by)', () => {
  const { client, relays } = circuit(3);
  const cell = Buffer.alloc(S);
  wrapForward(client, [1, 1, 1], Buffer.from('x'), S, cell, new PaddingSource());
  const { plain } = forward(relays, cell);
  assert.ok(plain);
  let zeros = 0;
  for (let i = 1; i < forwardCapacity(S, 3); i += 1) if (plain[i] === 0) zeros += 1;
  assert.ok(zeros < 30, `padding looks random (${zeros} zero bytes)`);
});

test('backward: origin seals, each hop adds a layer, the client opens it', () => {
  for (const n of [1, 2, 3]) {
    const { client, relays } = circuit(n);
    const body = randomBytes(backwardCapacity(S));
    const cell = Buffer.alloc(S);
    sealBackward(relays[n - 1]!, 42, body, S, cell);
    const seenX = [Buffer.from(cell.subarray(0, 16))];
    for (let i = n - 2; i >= 0; i -= 1) {
      assert.ok(layerBackward(relays[i]!, 1, cell, 0, S));
      seenX.push(Buffer.from(cell.subarray(0, 16)));
    }
    assert.equal(
      new Set(seenX.map((x) => x.toString('hex'))).size,
      seenX.length,
      'X differs per link',
    );
    assert.equal(unwrapBackward(client, n - 1, cell, 0, S), 42);
    assert.deepEqual(cell.subarray(BACKWARD_BODY_AT, BACKWARD_BODY_AT + body.length), body);
  }
});

test('backward: any altered byte fails the client check; wrong origin fails', () => {
  const { client, relays } = circuit(3);
  const body = Buffer.from('reply');
  for (const pos of [0, 15, 16, 31, 32, 500, S - 17]) {
    const cell = Buffer.alloc(S);
    sealBackward(relays[2]!, 7, body, S, cell);
    layerBackward(relays[1]!, 1, cell, 0, S);
    cell[pos]! ^= 0x80; // the middle hop tampers
    layerBackward(relays[0]!, 1, cell, 0, S);
    assert.equal(unwrapBackward(client, 2, cell, 0, S), 0, `flip at ${pos}`);
  }
  // The last 16 bytes a hop sends are the ones the next hop pushes out of
  // the cell: a change there reaches no one (the guard's output is the
  // same bytes as without it).
  const clean = Buffer.alloc(S);
  sealBackward(relays[2]!, 8, body, S, clean);
  layerBackward(relays[1]!, 2, clean, 0, S);
  const flipped = Buffer.from(clean);
  flipped[S - 1]! ^= 0x80;
  layerBackward(relays[0]!, 2, clean, 0, S);
  layerBackward(relays[0]!, 2, flipped, 0, S);
  assert.ok(flipped.equals(clean), 'pushed-out bytes do not reach the client');
  const cell = Buffer.alloc(S);
  sealBackward(relays[1]!, 7, body, S, cell);
  layerBackward(relays[0]!, 2, cell, 0, S);
  assert.equal(unwrapBackward(client, 2, Buffer.from(cell), 0, S), 0);
  assert.equal(unwrapBackward(client, 1, cell, 0, S), 7);
});

test('small cells work the same way', () => {
  const { client, relays } = circuit(3);
  const s = 400;
  const cell = Buffer.alloc(s);
  wrapForward(client, [1, 2, 3], Buffer.from('ack'), s, cell, new PaddingSource());
  let cur = cell;
  for (const r of relays) {
    const scratch = Buffer.alloc(s + 8);
    assert.ok(peelForward(r, cur, 0, s, scratch) > 0);
    cur = Buffer.from(scratch.subarray(8, 8 + s));
  }
  assert.equal(cur.subarray(0, 3).toString(), 'ack');
});

test('peel rejects bad sizes and garbage without throwing', () => {
  const { relays } = circuit(1);
  for (let i = 0; i < 2000; i += 1) {
    const len = i % 1500;
    const junk = randomBytes(len);
    assert.equal(peelForward(relays[0]!, junk, 0, len, Buffer.alloc(len + 8)), 0);
    assert.equal(unwrapBackward(relays, 0, Buffer.from(junk), 0, len), 0);
  }
  assert.equal(peelForward(relays[0]!, Buffer.alloc(10), 5, 100, Buffer.alloc(200)), 0);
});

test('replay window: accepts each number once, within the window, in any order', () => {
  const w = new ReplayWindow();
  assert.equal(w.accept(0), false);
  assert.equal(w.accept(1), true);
  assert.equal(w.accept(1), false);
  assert.equal(w.accept(3), true);
  assert.equal(w.accept(2), true);
  assert.equal(w.accept(2), false);
  assert.equal(w.accept(10_000), true);
  assert.equal(w.accept(10_000 - REPLAY_WINDOW_SIZE), false, 'too old');
  assert.equal(w.accept(10_000 - REPLAY_WINDOW_SIZE + 1), true, 'oldest inside the window');
  assert.equal(w.accept(-5), false);
  assert.equal(w.accept(1.5), false);
});

test('replay window against a slow model (random order, duplicates)', () => {
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const w = new ReplayWindow();
  const seen = new Set<number>();
  let top = 0;
  for (let i = 0; i < 50_000; i += 1) {
    const seq = Math.max(1, Math.floor(top + 50 - rnd() * 3000));
    const expected = !seen.has(seq) && !(top - seq >= REPLAY_WINDOW_SIZE);
    assert.equal(w.accept(seq), expected, `seq ${seq} top ${top}`);
    if (expected) {
      seen.add(seq);
      top = Math.max(top, seq);
    }
  }
});

test('the last hop of a wrap sees the for-this-hop flag; earlier hops do not', () => {
  const { client, relays } = circuit(2);
  const cell = Buffer.alloc(S);
  wrapForward(client, [9, 9], Buffer.from('extend'), S, cell, new PaddingSource());
  const s1 = Buffer.alloc(S + 8);
  assert.equal(peelForward(relays[0]!, cell, 0, S, s1), 9);
  assert.equal(s1[0]! & SEQ_FLAG_FOR_THIS_HOP, 0, 'hop 1 forwards');
  const s2 = Buffer.alloc(S + 8);
  assert.equal(peelForward(relays[1]!, Buffer.from(s1.subarray(8, 8 + S)), 0, S, s2), 9);
  assert.equal(s2[0]! & SEQ_FLAG_FOR_THIS_HOP, SEQ_FLAG_FOR_THIS_HOP, 'hop 2 is addressed');
});

// onion.ts seals and opens with one stream call from block 0 and rounds
// its stream calls up to whole vector runs; this reference does it the
// plain way (a key call, then the data at counter 1) at every cell size.
test('every cell size agrees with a two-call reference, forward and backward', () => {
  const { client, relays } = circuit(2);
  const pad = new PaddingSource();
  const polyKey = Buffer.alloc(32);
  for (let size = 2 * FORWARD_HOP_OVERHEAD + 8; size <= 2048; size += 1) {
    const payload = randomBytes(size % (forwardCapacity(size, 2) + 1));
    const cell = Buffer.alloc(size);
    wrapForward(client, [size, size + 1], payload, size, cell, pad);
    // Hop 1 by the reference.
    // The XChaCha20 nonce is the cell's 16-byte N followed by 8 zero bytes.
    const n = Buffer.concat([cell.subarray(0, 16), Buffer.alloc(8)]);
    const c = cell.subarray(32, size);
    sodium.crypto_stream_xchacha20(polyKey, n, client[0]!.forward);
    assert.ok(sodium.crypto_onetimeauth_verify(cell.subarray(16, 32), c, polyKey), `size ${size}`);
    const d = Buffer.concat([c, Buffer.alloc(40)]);
    sodium.crypto_stream_xchacha20_xor_ic(d, d, n, 1, client[0]!.forward);
    const scratch = Buffer.alloc(size + 8);
    assert.equal(peelForward(relays[0]!, cell, 0, size, scratch), size, `size ${size}`);
    assert.ok(scratch.equals(d), `peel at size ${size}`);
    const scratch2 = Buffer.alloc(size + 8);
    assert.equal(peelForward(relays[1]!, scratch, 8, size, scratch2), size + 1);
    assert.ok(scratch2.subarray(8, 8 + payload.length).equals(payload));

    const body = randomBytes(size % (backwardCapacity(size) + 1));
    const back = Buffer.alloc(size);
    sealBackward(relays[0]!, size, body, size, back);
    const nonce = Buffer.concat([back.subarray(0, 16), Buffer.alloc(8)]);
    const bc = Buffer.from(back.subarray(32, size));
    sodium.crypto_stream_xchacha20(polyKey, nonce, relays[0]!.backwardOrigin);
    // The tag covers C but not the tail of 16 * (MAX_HOPS - 1) bytes.
    const tagged = bc.subarray(0, bc.length - BACKWARD_TAIL_BYTES);
    assert.ok(sodium.crypto_onetimeauth_verify(back.subarray(16, 32), tagged, polyKey));
    sodium.crypto_stream_xchacha20_xor_ic(bc, bc, nonce, 1, relays[0]!.backwardOrigin);
    assert.equal(bc.readUInt32BE(4), size);
    assert.ok(bc.subarray(8, 8 + body.length).equals(body));
    assert.equal(unwrapBackward(client, 0, back, 0, size), size);
    assert.ok(back.subarray(32, size - BACKWARD_TAIL_BYTES).equals(tagged), `unwrap at ${size}`);
  }
});

test('backward cells larger than any forward cell still round-trip', () => {
  const { client, relays } = circuit(3);
  for (const size of [2048, 3000, 5000, 1410]) {
    const body = randomBytes(backwardCapacity(size));
    const cell = Buffer.alloc(size);
    sealBackward(relays[2]!, 3, body, size, cell);
    assert.ok(layerBackward(relays[1]!, size, cell, 0, size));
    assert.ok(layerBackward(relays[0]!, size, cell, 0, size));
    assert.equal(unwrapBackward(client, 2, cell, 0, size), 3, `size ${size}`);
    assert.ok(cell.subarray(BACKWARD_BODY_AT, BACKWARD_BODY_AT + body.length).equals(body));
  }
  // Forward cells after the work buffers grew.
  const cell = Buffer.alloc(S);
  wrapForward(client, [4, 4, 4], Buffer.from('after'), S, cell, new PaddingSource());
  const { plain } = forward(relays, cell);
  assert.equal(plain?.subarray(0, 5).toString(), 'after');
});

test('default randomness: no nonce or X repeats across many pool refills', () => {
  const { client, relays } = circuit(3);
  const pad = new PaddingSource();
  const seen = new Set<string>();
  const cell = Buffer.alloc(400);
  for (let k = 0; k < 1000; k += 1) {
    wrapForward(client, [k + 1, k + 1, k + 1], Buffer.alloc(0), 400, cell, pad);
    seen.add(cell.toString('hex', 0, 16));
    sealBackward(relays[2]!, k + 1, Buffer.alloc(0), 400, cell);
    seen.add(cell.toString('hex', 0, 16));
  }
  assert.equal(seen.size, 2000);
});
