// Key epochs (src/circuit/key-epochs.ts) on a virtual clock in milliseconds:
// a sender and a receiver of one hop and direction, with cells that carry a
// keyed BLAKE2b tag under the epoch's use key (the onion layers' tag check
// stands in; test/unit/circuit-epochs.test.ts runs the real layers).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import sodium from 'sodium-native';
import {
  EPOCH_CELLS,
  EPOCH_GRACE_MS,
  EPOCH_MS,
  EPOCH_REORDER_MS,
  EPOCH_WINDOW_MS,
  EpochReceiver,
  EpochSender,
  epochKdf,
  type EpochKeyUse,
} from '../../src/circuit/key-epochs.js';

interface Holder {
  mat: Buffer;
}

const use: EpochKeyUse<Holder> = {
  create: () => ({ mat: Buffer.alloc(32) }),
  load: (h, key) => sodium.crypto_generichash(h.mat, Buffer.from('test use'), key),
  wipe: (h) => sodium.sodium_memzero(h.mat),
};

/** A cell: tag [16] | payload, the tag keyed by the epoch's use key. */
function seal(h: Holder, payload: Buffer): Buffer {
  const tag = Buffer.alloc(16);
  sodium.crypto_generichash(tag, payload, h.mat);
  return Buffer.concat([tag, payload]);
}

function opens(h: Holder, cell: Buffer): boolean {
  const tag = Buffer.alloc(16);
  sodium.crypto_generichash(tag, cell.subarray(16), h.mat);
  return sodium.sodium_memcmp(tag, cell.subarray(0, 16));
}

/** Receive a cell as the circuit code does: try each key, accept on success. */
function receive(rx: EpochReceiver<Holder>, cell: Buffer, now: number): boolean {
  const n = rx.tries(now);
  for (let i = 0; i < n; i += 1) {
    if (opens(rx.key(i), cell)) {
      rx.accept(i, now);
      return true;
    }
  }
  rx.reject();
  return false;
}

function pair(
  rootBytes = randomBytes(32),
  senderAt = 0,
  receiverAt = 0,
  cells = EPOCH_CELLS,
): { tx: EpochSender<Holder>; rx: EpochReceiver<Holder> } {
  return {
    tx: new EpochSender(rootBytes, senderAt, use, cells),
    rx: new EpochReceiver(rootBytes, receiverAt, use),
  };
}

function send(tx: EpochSender<Holder>, now: number, text = `cell at ${now}`): Buffer {
  return seal(tx.key(now), Buffer.from(text));
}

const isZero = (b: Buffer) => b.every((x) => x === 0);

test('key epochs: the sender steps by time every 60 s, the receiver follows', () => {
  const { tx, rx } = pair();
  const keys: string[] = [];
  for (let now = 0; now < 5 * EPOCH_MS; now += 1000) {
    const cell = send(tx, now);
    keys.push(tx.inspect().keys[0]!.key.toString('hex'));
    assert.ok(receive(rx, cell, now + 20), `cell at ${now}`);
    assert.equal(tx.inspect().slot, Math.floor(now / EPOCH_MS));
  }
  // One key per slot, five different keys.
  assert.equal(new Set(keys).size, 5);
  assert.equal(rx.stats.unmatched, 0);
  assert.equal(rx.inspect().slot, 4);
});

test('key epochs: the sender steps after EPOCH_CELLS cells (2^16), the receiver follows', () => {
  assert.equal(EPOCH_CELLS, 65_536);
  const { tx, rx } = pair();
  const first = Buffer.from(tx.inspect().keys[0]!.key);
  for (let i = 0; i < EPOCH_CELLS; i += 1) tx.key(1000);
  assert.ok(tx.inspect().keys[0]!.key.equals(first), 'the same key for 2^16 cells');
  assert.equal(tx.inspect().step, 0);
  const cell = send(tx, 1000);
  assert.equal(tx.inspect().step, 1, 'cell 2^16 + 1 is under the next key');
  assert.ok(!tx.inspect().keys[0]!.key.equals(first));
  assert.ok(receive(rx, cell, 1010));
  assert.equal(rx.inspect().step, 1);
  assert.equal(rx.stats.steps, 1);
});

test('key epochs: cells reordered across a step and across a slot boundary are accepted within the grace', () => {
  const { tx, rx } = pair(randomBytes(32), 0, 0, 4);
  // Four cells under step 0, then one under step 1, delivered first.
  const early = [0, 1, 2, 3].map(() => send(tx, 100));
  const late = send(tx, 100);
  assert.ok(receive(rx, early[0]!, 110));
  assert.ok(receive(rx, late, 120), 'the next step opens and becomes current');
  for (const c of early.slice(1)) assert.ok(receive(rx, c, 130), 'the previous key, in its grace');
  // Across the slot boundary.
  const beforeBoundary = send(tx, EPOCH_MS - 5);
  const afterBoundary = send(tx, EPOCH_MS + 5);
  assert.ok(receive(rx, afterBoundary, EPOCH_MS + 30));
  assert.equal(rx.inspect().slot, 1);
  assert.ok(receive(rx, beforeBoundary, EPOCH_MS + 40), 'the last slot-0 key, in its grace');
  assert.equal(rx.stats.unmatched, 0);
});

test('key epochs: a cell of an erased epoch is dropped and counted', () => {
  const { tx, rx } = pair(randomBytes(32), 0, 0, 4);
  const cells = Array.from({ length: 5 }, () => send(tx, 100));
  assert.ok(receive(rx, cells[4]!, 110)); // step 1: step 0 becomes previous
  // After the reordering grace the previous key is gone.
  assert.ok(!receive(rx, cells[0]!, 110 + EPOCH_REORDER_MS));
  assert.equal(rx.stats.unmatched, 1);
  // A slot-0 cell after the slot's deadline: no key of slot 0 is left.
  const old = send(tx, EPOCH_MS - 1);
  assert.ok(!receive(rx, old, EPOCH_MS + EPOCH_GRACE_MS));
  assert.equal(rx.stats.unmatched, 2);
});

test('key epochs: erased keys are zeroed and no later state holds an earlier key', () => {
  const { tx, rx } = pair(randomBytes(32), 0, 0, 4);
  const cells = Array.from({ length: 5 }, () => send(tx, 100));
  assert.ok(receive(rx, cells[0]!, 100));
  // Slot 0, step 0: current (0,0), next step (0,1), next slot (1,0), no previous.
  const start = rx.inspect();
  assert.deepEqual(
    start.keys.map((k) => [k.slot, k.step]),
    [
      [0, 0],
      [0, 1],
      [1, 0],
    ],
  );
  assert.equal(start.erased.length, 1);
  const step0 = Buffer.from(start.keys[0]!.key);
  assert.ok(receive(rx, cells[4]!, 110)); // step 1; step 0 is the previous key
  assert.equal(rx.inspect().keys.length, 4, 'at most four epoch keys');
  rx.advance(110 + EPOCH_REORDER_MS);
  const after = rx.inspect();
  assert.equal(after.erased.length, 1, 'the previous key position is erased');
  assert.ok(isZero(after.erased[0]!), 'and zeroed');
  for (const k of after.keys) assert.ok(!k.key.equals(step0), 'step 0 is nowhere');
  // At slot 0's deadline nothing of slot 0 is held, however buffers are reused.
  const slot0 = after.keys.filter((k) => k.slot === 0).map((k) => Buffer.from(k.key));
  slot0.push(step0);
  rx.advance(EPOCH_MS + EPOCH_GRACE_MS);
  const later = rx.inspect();
  assert.equal(later.slot, 1);
  for (const k of later.keys) {
    assert.equal(k.slot >= 1, true);
    for (const o of slot0) assert.ok(!k.key.equals(o));
  }
  for (const b of later.erased) assert.ok(isZero(b));
  // The sender holds one epoch key; wipe zeroes everything on both sides.
  assert.equal(tx.inspect().keys.length, 1);
  tx.wipe();
  rx.wipe();
  for (const b of [...tx.inspect().erased, ...rx.inspect().erased]) assert.ok(isZero(b));
  assert.equal(tx.inspect().keys.length + rx.inspect().keys.length, 0);
  assert.equal(tx.inspect().chain, null);
});

test('key epochs: an idle or hostile peer cannot keep a key alive past slot end + grace', () => {
  const root = randomBytes(32);
  const { tx, rx } = pair(root);
  const first = Buffer.from(rx.inspect().keys[0]!.key);
  // A hostile sender that never leaves slot 0 (its clock never reaches 60 s).
  const stuck = new EpochSender(root, Number.MAX_SAFE_INTEGER / 2, use);
  assert.ok(receive(rx, send(tx, 10), 20));
  assert.ok(receive(rx, send(stuck, 0), EPOCH_MS + 1), 'slot 0 is still open in the grace');
  rx.advance(EPOCH_MS + EPOCH_GRACE_MS - 1);
  assert.equal(rx.inspect().slot, 0, 'still slot 0 just before the deadline');
  // Idle: no cell, only the tick; at the deadline slot 0 is erased.
  rx.advance(EPOCH_MS + EPOCH_GRACE_MS);
  assert.equal(rx.inspect().slot, 1);
  for (const k of rx.inspect().keys) assert.ok(!k.key.equals(first));
  assert.ok(!receive(rx, send(stuck, 0), EPOCH_MS + EPOCH_GRACE_MS + 1));
  // Ten idle minutes: the receiver is in the slot of its clock, and the
  // sender, idle as well, meets it there.
  rx.advance(10 * EPOCH_MS + 5);
  assert.equal(rx.inspect().slot, 9, 'slot 9 until its deadline, slot 10 open');
  assert.ok(receive(rx, send(tx, 10 * EPOCH_MS + 5), 10 * EPOCH_MS + 30));
  assert.equal(rx.inspect().slot, 10);
  assert.equal(rx.stats.forcedSlots, 9);
});

test('key epochs: a sender more than one step ahead is dropped until the next slot, then resynchronises', () => {
  const { tx, rx } = pair(randomBytes(32), 0, 0, 4);
  assert.ok(receive(rx, send(tx, 100), 100));
  // Eleven cells lost: the sender is now two steps ahead (step 2, its 12th cell).
  for (let i = 0; i < 11; i += 1) send(tx, 200);
  assert.equal(tx.inspect().step, 2);
  let dropped = 0;
  for (let now = 300; now < EPOCH_MS; now += 1000)
    if (!receive(rx, send(tx, now), now)) dropped += 1;
  assert.ok(dropped > 0, 'cells two steps ahead do not open');
  assert.equal(rx.stats.unmatched, dropped);
  // The next slot starts a new sub-chain on both sides: they meet again.
  assert.ok(receive(rx, send(tx, EPOCH_MS + 10), EPOCH_MS + 20));
  for (let now = EPOCH_MS + 100; now < EPOCH_MS + 5000; now += 100) {
    assert.ok(receive(rx, send(tx, now), now + 5));
  }
});

test('key epochs: clocks offset by the handshake (either way, up to 8 s) lose no cell over ten minutes', () => {
  for (const [senderAt, receiverAt] of [
    [3000, 0], // forward: the client finishes the handshake after the relay made its state
    [0, 3000], // backward: the relay sends, the client started later
    [8000, 0],
    [0, 8000],
  ] as const) {
    const { tx, rx } = pair(randomBytes(32), senderAt, receiverAt, 1000);
    const start = Math.max(senderAt, receiverAt);
    for (let now = start; now < start + 10 * EPOCH_MS; now += 250) {
      // 40 ms of delay, and every 7th cell overtaken by the next one.
      const a = send(tx, now);
      const b = send(tx, now + 1);
      if ((now / 250) % 7 === 0) {
        assert.ok(receive(rx, b, now + 40));
        assert.ok(receive(rx, a, now + 45));
      } else {
        assert.ok(
          receive(rx, a, now + 40),
          `sender at ${senderAt}, receiver at ${receiverAt}, ${now}`,
        );
        assert.ok(receive(rx, b, now + 41));
      }
    }
    assert.equal(rx.stats.unmatched, 0);
  }
});

test('key epochs: the window: whatever the receiver holds at t opens no cell sent before t - W', () => {
  // A randomized run against the rule itself: at random times, capture the
  // receiver's keys and try them on every cell sent so far.
  for (let run = 0; run < 4; run += 1) {
    const { tx, rx } = pair(randomBytes(32), 1500 * run, 0, 50 + run * 200);
    const sent: { at: number; cell: Buffer }[] = [];
    let now = 1500 * run;
    for (let k = 0; k < 1500; k += 1) {
      now += Math.floor(Math.random() * 800);
      const cell = send(tx, now);
      sent.push({ at: now, cell });
      if (Math.random() < 0.9) receive(rx, cell, now + 30);
      if (k % 150 === 149) {
        const t = now + 30;
        rx.advance(t);
        const held = rx.inspect();
        const seized = [held.chain!, ...held.keys.map((k) => k.key)].map((b) => Buffer.from(b));
        // The keys held, and the first keys they derive (a held key
        // derives only later ones: the KDF is one-way), open no cell
        // older than t - W.
        const tries: Holder[] = [];
        for (const key of seized) {
          let k = Buffer.from(key);
          for (let step = 0; step < 4; step += 1) {
            const h = use.create();
            use.load(h, k);
            tries.push(h);
            const next = Buffer.alloc(32);
            epochKdf(next, k, Buffer.from('shallot-v2 epoch next'));
            k = next;
          }
          const h = use.create();
          const slotKey = Buffer.alloc(32);
          epochKdf(slotKey, key, Buffer.from('shallot-v2 slot key'));
          use.load(h, slotKey);
          tries.push(h);
        }
        let old = 0;
        for (const { at, cell: c } of sent) {
          // Cells just older than the window are the ones at risk.
          if (at >= t - EPOCH_WINDOW_MS || at < t - 3 * EPOCH_WINDOW_MS) continue;
          old += 1;
          for (const h of tries)
            assert.ok(!opens(h, c), `a key held at ${t} opens a cell of ${at}`);
        }
        if (k > 600) assert.ok(old > 0);
      }
    }
  }
});
