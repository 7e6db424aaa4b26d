// The key-epochs-v2 vector of docs/protocol.md (section 8.10) against the
// sender and receiver of src/circuit/key-epochs.ts.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createCipheriv } from 'node:crypto';
import sodium from 'sodium-native';
import {
  backwardUse,
  ClientHopKeys,
  forwardUse,
  hopRoots,
  RelayHopKeys,
} from '../../src/circuit/circuit-keys.js';
import {
  EPOCH_CELLS,
  EPOCH_GRACE_MS,
  EPOCH_MS,
  EPOCH_REORDER_MS,
  EPOCH_WINDOW_MS,
  EpochReceiver,
  EpochSender,
  type EpochKeyUse,
} from '../../src/circuit/key-epochs.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const doc = fs.readFileSync(path.resolve(here, '..', '..', '..', 'docs', 'protocol.md'), 'utf8');

function vector(name: string): Record<string, string> {
  const m = new RegExp('```vector ' + name + '\\n([\\s\\S]*?)```').exec(doc);
  assert.ok(m?.[1], `docs/protocol.md has vector ${name}`);
  const out: Record<string, string> = {};
  for (const line of m[1].trim().split('\n')) {
    const i = line.indexOf(':');
    out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

/** The use keys are the epoch key itself here: the vector is about the chains. */
const identity: EpochKeyUse<{ key: Buffer }> = {
  create: () => ({ key: Buffer.alloc(32) }),
  load: (h, key) => key.copy(h.key),
  wipe: (h) => h.key.fill(0),
};

test('vector key-epochs-v2: constants', () => {
  const v = vector('key-epochs-v2');
  assert.equal(Number(v.epoch_ms), EPOCH_MS);
  assert.equal(Number(v.epoch_cells), EPOCH_CELLS);
  assert.equal(Number(v.epoch_grace_ms), EPOCH_GRACE_MS);
  assert.equal(Number(v.epoch_reorder_ms), EPOCH_REORDER_MS);
  assert.equal(Number(v.window_ms), EPOCH_WINDOW_MS);
});

test('vector key-epochs-v2: the sender goes through the slot and step keys', () => {
  const v = vector('key-epochs-v2');
  const tx = new EpochSender(Buffer.from(v.root!, 'hex'), 0, identity);
  const hex = () => tx.inspect().keys[0]!.key.toString('hex');
  assert.equal(tx.key(0).key.toString('hex'), v.slot0_key);
  assert.equal(tx.inspect().chain!.toString('hex'), v.slot1_chain);
  for (let i = 1; i < EPOCH_CELLS; i += 1) tx.key(1);
  assert.equal(hex(), v.slot0_key);
  assert.equal(tx.key(2).key.toString('hex'), v.slot0_step1);
  for (let i = 1; i < EPOCH_CELLS; i += 1) tx.key(3);
  assert.equal(tx.key(4).key.toString('hex'), v.slot0_step2);
  assert.equal(tx.key(EPOCH_MS).key.toString('hex'), v.slot1_key);
  assert.equal(tx.inspect().chain!.toString('hex'), v.slot2_chain);
  assert.equal(tx.key(2 * EPOCH_MS).key.toString('hex'), v.slot2_key);
  // An idle sender goes straight through: slot 2 from slot 0.
  const idle = new EpochSender(Buffer.from(v.root!, 'hex'), 0, identity);
  assert.equal(idle.key(2 * EPOCH_MS + 5).key.toString('hex'), v.slot2_key);
});

test('vector key-epochs-v2: the receiver holds the keys it may be sent', () => {
  const v = vector('key-epochs-v2');
  const rx = new EpochReceiver(Buffer.from(v.root!, 'hex'), 0, identity);
  const held = () =>
    rx
      .inspect()
      .keys.map((k) => `${k.slot}.${k.step} ${k.key.toString('hex')}`)
      .sort();
  assert.deepEqual(held(), [`0.0 ${v.slot0_key}`, `0.1 ${v.slot0_step1}`, `1.0 ${v.slot1_key}`]);
  assert.equal(rx.inspect().chain!.toString('hex'), v.slot1_chain);
  rx.advance(EPOCH_MS + EPOCH_GRACE_MS);
  assert.equal(rx.inspect().chain!.toString('hex'), v.slot2_chain);
  assert.ok(held().includes(`2.0 ${v.slot2_key}`));
  assert.ok(held().includes(`1.0 ${v.slot1_key}`));
});

test('vector key-epoch-keys-v2: roots from the handshake material, the use keys of slot 0', () => {
  const v = vector('key-epoch-keys-v2');
  const m = Buffer.from(v.material!, 'hex');
  const f = Buffer.alloc(32);
  const b = Buffer.alloc(32);
  hopRoots(m, f, b);
  assert.equal(f.toString('hex'), v.root_forward);
  assert.equal(b.toString('hex'), v.root_backward);
  // The same through BLAKE2b directly: the label is the key, M the message.
  const direct = Buffer.alloc(32);
  sodium.crypto_generichash(direct, m, Buffer.from('shallot-v2 forward root'));
  assert.equal(direct.toString('hex'), v.root_forward);
  // The relay and the client agree on slot 0's keys in both directions.
  const relay = new RelayHopKeys(m, 0);
  const client = new ClientHopKeys(m, 0);
  assert.equal(client.forward.inspect().keys[0]!.key.toString('hex'), v.forward_slot0_key);
  assert.equal(relay.forward.inspect().keys[0]!.key.toString('hex'), v.forward_slot0_key);
  assert.equal(relay.backward.inspect().keys[0]!.key.toString('hex'), v.backward_slot0_key);
  assert.equal(client.backward.inspect().keys[0]!.key.toString('hex'), v.backward_slot0_key);
  assert.equal(client.forward.key(0).forward.toString('hex'), v.kf);
  const back = relay.backwardKey(0);
  assert.equal(back.backwardOrigin.toString('hex'), v.kb_o);
  assert.equal(back.backwardForward.toString('hex'), v.kb_f);
  const kx = Buffer.alloc(16);
  sodium.crypto_generichash(
    kx,
    Buffer.from('shallot-v2 use header'),
    Buffer.from(v.backward_slot0_key!, 'hex'),
  );
  assert.equal(kx.toString('hex'), v.kx);
  const out = Buffer.alloc(16);
  back.permute(Buffer.alloc(16), out);
  assert.equal(out.toString('hex'), v.kx_of_zero);
  const aes = createCipheriv('aes-128-ecb', kx, null).setAutoPadding(false);
  assert.equal(aes.update(Buffer.alloc(16)).toString('hex'), v.kx_of_zero);
  // Loading and wiping go through the same holders.
  const h = forwardUse.create();
  forwardUse.load(h, Buffer.from(v.forward_slot0_key!, 'hex'));
  assert.equal(h.forward.toString('hex'), v.kf);
  const hb = backwardUse.create();
  backwardUse.load(hb, Buffer.from(v.backward_slot0_key!, 'hex'));
  assert.equal(hb.backwardOrigin.toString('hex'), v.kb_o);
  backwardUse.wipe(hb);
  assert.ok(hb.backwardOrigin.every((x) => x === 0) && hb.backwardForward.every((x) => x === 0));
  relay.wipe();
  client.wipe();
});
