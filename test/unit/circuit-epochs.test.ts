// Forward secrecy within a circuit (docs/protocol.md 8.10, threat model
// section 11), as an attack: record the cells on each relay's incoming
// link, seize the relays' circuit state at time t, and try the keys found
// there (and every key they derive) on the cells recorded before t - W.
// The real onion layers (wrapForward, peelForward) and the real key
// schedule the relay and the client use (circuit-keys.ts), on a virtual
// clock in milliseconds. The same attack on keys that last as long as the
// circuit (the code before epochs) reads every recorded cell.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import {
  backwardUse,
  ClientHopKeys,
  forwardKeysFor,
  forwardUse,
  RelayHopKeys,
  unwrapBackwardEpochs,
} from '../../src/circuit/circuit-keys.js';
import { EPOCH_MS, EPOCH_WINDOW_MS, epochKdf } from '../../src/circuit/key-epochs.js';
import {
  BACKWARD_X_BYTES,
  backwardCapacity,
  HOP_KEY_BYTES,
  HopKeys,
  layerBackward,
  PaddingSource,
  peelForward,
  sealBackward,
  unwrapBackward,
  wrapForward,
  type ForwardLayerKeys,
} from '../../src/circuit/onion.js';

const S = 1410;
const HOPS = 3;

interface Recorded {
  at: number;
  cell: Buffer;
}

/** What an attacker derives from seized epoch secrets: the keys, later steps, later slots. */
function derivedKeys(seized: Buffer[], steps = 8, slots = 3): ForwardLayerKeys[] {
  return derived(seized, steps, slots, (k) => {
    const h = forwardUse.create();
    forwardUse.load(h, k);
    return h;
  });
}

function derivedBackwardKeys(seized: Buffer[], steps = 8, slots = 3): HopKeys[] {
  return derived(seized, steps, slots, (k) => {
    const h = backwardUse.create();
    backwardUse.load(h, k);
    return h;
  });
}

function derived<T>(seized: Buffer[], steps: number, slots: number, make: (k: Buffer) => T): T[] {
  const out: T[] = [];
  const add = (k: Buffer) => out.push(make(k));
  for (const secret of seized) {
    // As an epoch key, and its next steps.
    let k = Buffer.from(secret);
    for (let i = 0; i < steps; i += 1) {
      add(k);
      const n = Buffer.alloc(32);
      epochKdf(n, k, Buffer.from('shallot-v2 epoch next'));
      k = n;
    }
    // As a slot chain secret: the first keys of the slots it derives.
    let chain = Buffer.from(secret);
    for (let j = 0; j < slots; j += 1) {
      const sk = Buffer.alloc(32);
      epochKdf(sk, chain, Buffer.from('shallot-v2 slot key'));
      add(sk);
      const n = Buffer.alloc(32);
      epochKdf(n, chain, Buffer.from('shallot-v2 slot next'));
      chain = n;
    }
  }
  return out;
}

/** How many recorded cells sent in [from, to) the keys open. */
function opened(keys: ForwardLayerKeys[], cells: Recorded[], from: number, to: number): number {
  const scratch = Buffer.alloc(S + 8);
  let n = 0;
  for (const { at, cell } of cells) {
    if (at < from || at >= to) continue;
    if (keys.some((k) => peelForward(k, cell, 0, S, scratch) > 0)) n += 1;
  }
  return n;
}

/**
 * A 3-hop circuit carrying one forward cell every `everyMs` for `untilMs`;
 * each relay ticks every 500 ms. Returns the cells each relay received.
 */
function run(
  untilMs: number,
  everyMs: number,
  peel: (hop: number, cell: Buffer, scratch: Buffer, now: number) => number,
  tick: (now: number) => void,
  seizeAt: number,
  onSeize: () => void,
  clientKeys: (ClientHopKeys | ForwardLayerKeys)[],
): Recorded[][] {
  const recorded: Recorded[][] = Array.from({ length: HOPS }, () => []);
  const pad = new PaddingSource();
  const list: ForwardLayerKeys[] = [];
  const cell = Buffer.alloc(S);
  const scratch = Buffer.alloc(S + 8);
  const seqs = [0, 0, 0];
  let nextTick = 0;
  let seized = false;
  for (let now = 1000; now < untilMs; now += everyMs) {
    while (nextTick <= now) tick((nextTick += 500));
    if (!seized && now >= seizeAt) {
      onSeize();
      seized = true;
    }
    for (let i = 0; i < HOPS; i += 1) seqs[i] = (seqs[i] as number) + 1;
    const keys =
      clientKeys[0] instanceof ClientHopKeys
        ? forwardKeysFor(clientKeys as ClientHopKeys[], now, list)
        : (clientKeys as ForwardLayerKeys[]);
    wrapForward(keys, seqs, Buffer.from(`packet sent at ${now}`), S, cell, pad);
    let cur = Buffer.from(cell);
    for (let h = 0; h < HOPS; h += 1) {
      recorded[h]!.push({ at: now, cell: Buffer.from(cur) });
      assert.ok(peel(h, cur, scratch, now + 2 * h) > 0, `hop ${h + 1} at ${now}`);
      cur = Buffer.from(scratch.subarray(8, 8 + S));
    }
  }
  return recorded;
}

test('seized relay memory at t opens no forward cell sent before t - W (70 s), at any hop', () => {
  const material = Array.from({ length: HOPS }, () => randomBytes(HOP_KEY_BYTES));
  // Each relay made its state at CREATE; the client finished each hop later.
  const relays = material.map((m, i) => new RelayHopKeys(m, 500 + 100 * i));
  const client = material.map((m, i) => new ClientHopKeys(m, 700 + 150 * i));
  const seizeAt = 4 * EPOCH_MS + 27_000;
  let seized: Buffer[][] = [];
  const recorded = run(
    seizeAt + 5000,
    250,
    (h, cell, scratch, now) => relays[h]!.peel(cell, 0, S, scratch, now),
    (now) => relays.forEach((r) => r.advance(now)),
    seizeAt,
    () => {
      // The memory of each relay: every epoch secret its circuit state holds.
      seized = relays.map((r) => {
        const s = r.forward.inspect();
        return [s.chain!, ...s.keys.map((k) => k.key)].map((b) => Buffer.from(b));
      });
    },
    client,
  );
  for (let h = 0; h < HOPS; h += 1) {
    const keys = derivedKeys(seized[h]!);
    const old = recorded[h]!.filter((c) => c.at < seizeAt - EPOCH_WINDOW_MS).length;
    assert.ok(old > 500, 'cells were recorded before the window');
    assert.equal(opened(keys, recorded[h]!, 0, seizeAt - EPOCH_WINDOW_MS), 0, `hop ${h + 1}`);
    // The attack itself works: the seized keys do read the cells of the
    // current slot (the window is not empty because the attack is weak).
    const recent = opened(keys, recorded[h]!, seizeAt - 20_000, seizeAt);
    assert.ok(recent > 0, `hop ${h + 1}: the seized keys open recent cells`);
  }
  for (const r of relays) r.wipe();
});

test('seized relay memory: an idle circuit erases its keys on the tick alone', () => {
  const material = randomBytes(HOP_KEY_BYTES);
  const relay = new RelayHopKeys(material, 0);
  const client = new ClientHopKeys(material, 300);
  const scratch = Buffer.alloc(S + 8);
  const cell = Buffer.alloc(S);
  const pad = new PaddingSource();
  const cells: Recorded[] = [];
  for (let now = 1000; now < 20_000; now += 1000) {
    wrapForward([client.forward.key(now)], [now], Buffer.from('x'), S, cell, pad);
    cells.push({ at: now, cell: Buffer.from(cell) });
    assert.ok(relay.peel(cell, 0, S, scratch, now + 3) > 0);
  }
  // Then nothing for ten minutes, only the relay's tick.
  for (let now = 20_000; now <= 10 * EPOCH_MS; now += 500) relay.advance(now);
  const s = relay.forward.inspect();
  const keys = derivedKeys([s.chain!, ...s.keys.map((k) => k.key)]);
  assert.equal(opened(keys, cells, 0, Infinity), 0);
});

test('control: keys that last as long as the circuit (no epochs) give every recorded cell away', () => {
  const material = Array.from({ length: HOPS }, () => randomBytes(HOP_KEY_BYTES));
  const relays = material.map((m) => new HopKeys(m));
  const client = material.map((m) => new HopKeys(m));
  const seizeAt = 4 * EPOCH_MS + 27_000;
  let seized: ForwardLayerKeys[] = [];
  const recorded = run(
    seizeAt + 5000,
    1000,
    (h, cell, scratch) => peelForward(relays[h]!, cell, 0, S, scratch),
    () => {},
    seizeAt,
    () => {
      // A copy of each relay's forward key, as its memory holds it.
      seized = relays.map((r) => ({ forward: Buffer.from(r.forward) }));
    },
    client,
  );
  for (let h = 0; h < HOPS; h += 1) {
    const old = recorded[h]!.filter((c) => c.at < seizeAt - EPOCH_WINDOW_MS).length;
    assert.equal(opened([seized[h]!], recorded[h]!, 0, seizeAt - EPOCH_WINDOW_MS), old);
  }
});

/**
 * Whether `keys` remove a backward layer of a recorded cell: a forwarding
 * hop's header inverts to u64(c) || 0^8 (then its layer decrypts), or the
 * origin's tag verifies.
 */
function opensBackward(keys: HopKeys, cell: Buffer, origin: boolean): boolean {
  if (origin) return unwrapBackward([keys], 0, Buffer.from(cell), 0, S) > 0;
  const h = Buffer.alloc(16);
  keys.unpermute(cell.subarray(0, BACKWARD_X_BYTES), h);
  return h.readUInt32BE(8) === 0 && h.readUInt32BE(12) === 0;
}

/** A 3-hop circuit's backward traffic: the exit originates, the others forward. */
function backwardRun(
  relayKey: (hop: number, now: number) => HopKeys,
  open: (cell: Buffer, now: number) => number,
  untilMs: number,
  everyMs: number,
  seizeAt: number,
  onSeize: () => void,
  tick: (now: number) => void,
): Recorded[][] {
  const sent: Recorded[][] = Array.from({ length: HOPS }, () => []);
  const counters = [0, 0, 0];
  const cell = Buffer.alloc(S);
  let seq = 0;
  let seized = false;
  let nextTick = 0;
  for (let now = 1000; now < untilMs; now += everyMs) {
    while (nextTick <= now) tick((nextTick += 500));
    if (!seized && now >= seizeAt) {
      onSeize();
      seized = true;
    }
    seq += 1;
    const body = Buffer.alloc(Math.min(200, backwardCapacity(S)));
    body.write(`reply sent at ${now}`);
    sealBackward(relayKey(HOPS - 1, now), seq, body, S, cell);
    sent[HOPS - 1]!.push({ at: now, cell: Buffer.from(cell) });
    for (let h = HOPS - 2; h >= 0; h -= 1) {
      counters[h] = (counters[h] as number) + 1;
      assert.ok(layerBackward(relayKey(h, now + 1), counters[h] as number, cell, 0, S));
      sent[h]!.push({ at: now, cell: Buffer.from(cell) });
    }
    assert.equal(open(cell, now + 5), seq, `the client opens the reply of ${now}`);
  }
  return sent;
}

test('seized relay memory at t opens no backward cell sent before t - W, originated or forwarded', () => {
  const material = Array.from({ length: HOPS }, () => randomBytes(HOP_KEY_BYTES));
  const relays = material.map((m, i) => new RelayHopKeys(m, 500 + 100 * i));
  const client = material.map((m, i) => new ClientHopKeys(m, 900 + 300 * i));
  const chosen = [0, 0, 0];
  const seizeAt = 4 * EPOCH_MS + 33_000;
  let seized: Buffer[][] = [];
  const sent = backwardRun(
    (h, now) => relays[h]!.backwardKey(now),
    (cell, now) => unwrapBackwardEpochs(client, HOPS - 1, cell, 0, S, now, chosen),
    seizeAt + 5000,
    250,
    seizeAt,
    () => {
      seized = relays.map((r) => {
        const s = r.backward.inspect();
        return [s.chain!, ...s.keys.map((k) => k.key)].map((b) => Buffer.from(b));
      });
    },
    (now) => {
      relays.forEach((r) => r.advance(now));
      client.forEach((c) => c.advance(now));
    },
  );
  for (let h = 0; h < HOPS; h += 1) {
    const keys = derivedBackwardKeys(seized[h]!);
    const origin = h === HOPS - 1;
    let old = 0;
    let recent = 0;
    for (const { at, cell } of sent[h]!) {
      const opens = keys.some((k) => opensBackward(k, cell, origin));
      if (at < seizeAt - EPOCH_WINDOW_MS) {
        old += 1;
        assert.ok(!opens, `hop ${h + 1}: a seized key opens the cell it sent at ${at}`);
      } else if (at >= seizeAt - 20_000 && at < seizeAt && opens) recent += 1;
    }
    assert.ok(old > 500);
    assert.ok(recent > 0, `hop ${h + 1}: the seized keys open the cells of the current slot`);
  }
  // The client lost nothing over five slot changes (backwardRun checked each cell).
  for (const c of client) assert.equal(c.backward.stats.unmatched, 0);
});

test('control: backward keys that last as long as the circuit give every recorded backward cell away', () => {
  const material = Array.from({ length: HOPS }, () => randomBytes(HOP_KEY_BYTES));
  const relays = material.map((m) => new HopKeys(m));
  const client = material.map((m) => new HopKeys(m));
  const seizeAt = 4 * EPOCH_MS + 33_000;
  const sent = backwardRun(
    (h) => relays[h]!,
    (cell) => unwrapBackward(client, HOPS - 1, cell, 0, S),
    seizeAt + 5000,
    1000,
    seizeAt,
    () => {},
    () => {},
  );
  for (let h = 0; h < HOPS; h += 1) {
    const old = sent[h]!.filter((c) => c.at < seizeAt - EPOCH_WINDOW_MS);
    assert.ok(old.length > 100);
    for (const { cell } of old) assert.ok(opensBackward(relays[h]!, cell, h === HOPS - 1));
  }
});
