// Key separation (issue 9, hole 7): a hostile guard and a hostile exit
// around an honest middle learn the middle's forwarding keystream, the
// exit knowing what it sent and the guard what came out. With one backward
// key for originating and forwarding (version 1), that keystream is the tag
// key and cipher stream of a cell the middle would originate, and the pair
// forges cells the client takes for the middle's. With the key schedule of
// docs/protocol.md section 7.3 (Kb_o apart from Kb_f) the forgery fails.
// The same attack against keys set up the version 1 way (one Kb in both
// roles) succeeds: that shows the test can fail.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import sodium from 'sodium-native';
import {
  CELL_LARGE,
  CELL_SMALL,
  decodeRelay,
  Relay,
  relayMessage,
} from '../../src/circuit/cells.js';
import {
  BACKWARD_BODY_AT,
  BACKWARD_TAIL_BYTES,
  backwardCapacity,
  HOP_KEY_BYTES,
  HopKeys,
  layerBackward,
  sealBackward,
  unwrapBackward,
} from '../../src/circuit/onion.js';
import { ntorClientCreate, ntorClientFinish, ntorServerRespond } from '../../src/crypto/ntor.js';

/** A real 3-hop key setup (one ntor handshake per hop); `shared` puts the middle's keys the v1 way. */
function threeHops(shared: boolean): { client: HopKeys[]; relays: HopKeys[] } {
  const client: HopKeys[] = [];
  const relays: HopKeys[] = [];
  for (let i = 0; i < 3; i += 1) {
    const id = randomBytes(32);
    const b = randomBytes(32);
    const B = Buffer.alloc(32);
    sodium.crypto_scalarmult_base(B, b);
    const c = ntorClientCreate(id, B);
    const r = ntorServerRespond(id, b, B, c.message, HOP_KEY_BYTES);
    assert.ok(r);
    const k = ntorClientFinish(c.state, r.message, HOP_KEY_BYTES);
    assert.ok(k);
    client.push(new HopKeys(k));
    relays.push(new HopKeys(r.keys));
  }
  if (shared) {
    // Version 1: one Kb sealed the hop's own cells and layered the ones it forwarded.
    for (const k of [client[1]!, relays[1]!]) k.backwardForward.copy(k.backwardOrigin);
  }
  return { client, relays };
}

/**
 * The attack. The exit seals a cell and sends it; the honest middle adds
 * its layer (counter `counter`); the guard, which sees the result, XORs
 * away what the exit sent and has Z(Kb_f, X' || 0^8)[0, S-16). It builds
 * a cell as if the middle originated it with X = X': tag key Z[0, 32),
 * body under Z[64, ...) (the last 16 bytes of C it cannot encrypt, which
 * only garbles padding), then adds its own guard layer. Returns the
 * client's verdict: the sequence number it accepted, or 0.
 */
function forge(
  client: HopKeys[],
  relays: HopKeys[],
  size: number,
  counter: number,
  message: Buffer,
): { seq: number; cell: Buffer } {
  // The exit's cell: anything it likes; it keeps a copy.
  const sent = Buffer.alloc(size);
  sealBackward(relays[2]!, counter, Buffer.from('\x01\x00\x01x'), size, sent);
  const out = Buffer.from(sent);
  assert.ok(layerBackward(relays[1]!, counter, out, 0, size), 'the honest middle forwards');
  // The guard's view: the middle's header X' and its keystream.
  const xPrime = out.subarray(0, 16);
  const z = Buffer.alloc(size - 16);
  for (let i = 0; i < z.length; i += 1) z[i] = out[16 + i]! ^ sent[i]!;
  // The forged origin cell: X' | T | C | R.
  const forged = Buffer.alloc(size);
  xPrime.copy(forged, 0);
  const cLen = size - 32 - BACKWARD_TAIL_BYTES;
  const m = Buffer.alloc(cLen);
  m.writeUInt32BE(0, 0);
  m.writeUInt32BE(counter, 4); // the sequence number
  message.copy(m, 8);
  const c = forged.subarray(32, 32 + cLen);
  for (let i = 0; i < cLen; i += 1) {
    const k = 64 + i < z.length ? z[64 + i]! : 0; // past what it knows: garbage
    c[i] = m[i]! ^ k;
  }
  sodium.crypto_onetimeauth(forged.subarray(16, 32), c, z.subarray(0, 32));
  // The guard adds its layer as any guard would.
  assert.ok(layerBackward(relays[0]!, counter, forged, 0, size));
  const cell = Buffer.from(forged);
  return { seq: unwrapBackward(client, 1, cell, 0, size), cell };
}

const EVIL = relayMessage(Relay.extended, Buffer.alloc(64, 0xee));

test("version 1 keys (one Kb for both roles): guard and exit forge a cell the client takes for the middle's", () => {
  const { client, relays } = threeHops(true);
  for (const size of [CELL_SMALL, CELL_LARGE]) {
    for (let k = 1; k <= 20; k += 1) {
      const { seq, cell } = forge(client, relays, size, k, EVIL);
      assert.equal(seq, k, `forgery accepted (size ${size}, cell ${k})`);
      const msg = decodeRelay(cell, BACKWARD_BODY_AT, backwardCapacity(size));
      assert.ok(msg);
      assert.equal(msg.command, Relay.extended, 'the client reads the forged EXTENDED');
    }
  }
});

test('version 2 keys (Kb_o apart from Kb_f): the same forgery fails at the client every time', () => {
  const { client, relays } = threeHops(false);
  for (const size of [CELL_SMALL, CELL_LARGE]) {
    for (let k = 1; k <= 200; k += 1) {
      assert.equal(forge(client, relays, size, k, EVIL).seq, 0, `size ${size}, cell ${k}`);
    }
  }
  // The middle's genuine cells still open: the separation costs nothing.
  const cell = Buffer.alloc(CELL_LARGE);
  sealBackward(relays[1]!, 9, EVIL, CELL_LARGE, cell);
  assert.ok(layerBackward(relays[0]!, 1, cell, 0, CELL_LARGE));
  assert.equal(unwrapBackward(client, 1, cell, 0, CELL_LARGE), 9);
});

test('one key per use: forward, origin, forwarding and header keys all differ, on both sides', () => {
  const { client, relays } = threeHops(false);
  for (let i = 0; i < 3; i += 1) {
    const c = client[i]!;
    const r = relays[i]!;
    assert.ok(c.forward.equals(r.forward) && c.backwardOrigin.equals(r.backwardOrigin));
    assert.ok(c.backwardForward.equals(r.backwardForward));
    const keys = [c.forward, c.backwardOrigin, c.backwardForward].map((k) => k.toString('hex'));
    assert.equal(new Set(keys).size, 3, `hop ${i + 1}`);
    const a = Buffer.alloc(16);
    const b = Buffer.alloc(16);
    c.permute(Buffer.alloc(16), a);
    r.permute(Buffer.alloc(16), b);
    assert.ok(a.equals(b), 'both sides hold the same Kx');
  }
});
