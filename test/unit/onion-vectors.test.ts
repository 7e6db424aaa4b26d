// Checks the circuit vectors of docs/protocol.md (sections 7-9) against
// the code: the handshake as CREATE/CREATED carry it, the forward and
// backward onion layers, EXTEND, and the size and limit constants. Every
// value comes from the document; the code must reproduce it exactly.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createCipheriv } from 'node:crypto';
import sodium from 'sodium-native';
import {
  AVOID_FAILED_MS,
  CIRCUIT_DEAD_MS,
  PING_IDLE_MS,
  STEP_RESEND_MS,
  STEP_TIMEOUT_MS,
} from '../../client/client-node.js';
import {
  CIRCUIT_IDLE_MS,
  CREATE_RESEND_MS,
  EXTEND_TIMEOUT_MS,
  MAX_CIRCUITS,
  MAX_CIRCUITS_PER_LINK,
  MAX_EXTEND_TARGETS,
} from '../../relay/relay-node.js';
import {
  CELL_LARGE,
  CELL_SMALL,
  CIRCUIT_MTU,
  decodeCreate,
  decodeCreated,
  decodeDestroy,
  decodeExtend,
  decodeRelay,
  encodeCreate,
  encodeDestroy,
  encodeExtend,
  MAX_HOPS,
  Relay,
  RELAY_HEADER_BYTES,
  relayMessage,
} from '../../src/circuit/cells.js';
import {
  BACKWARD_BODY_AT,
  BACKWARD_TAIL_BYTES,
  backwardCapacity,
  FORWARD_HOP_OVERHEAD,
  forwardCapacity,
  HOP_KEY_BYTES,
  HopKeys,
  layerBackward,
  NONCE_BYTES,
  PaddingSource,
  peelForward,
  sealBackward,
  SEQ_FLAG_FOR_THIS_HOP,
  unwrapBackward,
  wrapForward,
} from '../../src/circuit/onion.js';
import { REPLAY_WINDOW_SIZE } from '../../src/circuit/replay-window.js';
import { ntorClientCreate, ntorClientFinish, ntorServerRespond } from '../../src/crypto/ntor.js';
import { LINK_DATAGRAM_BYTES, LINK_MESSAGE_BYTES } from '../../src/link/constants.js';
import {
  AUTH_VERSION,
  authVersionOf,
  decodeAuth,
  encodeAuth,
  MSG_BACKWARD,
  MSG_CREATE,
  MSG_CREATED,
  MSG_DESTROY,
  MSG_FORWARD,
  ROLE_DIALER,
} from '../../src/link/messages.js';
import { formatIp, parseIp } from '../../src/net/cidr.js';

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

function field(v: Record<string, string>, name: string): string {
  const value = v[name];
  assert.ok(value !== undefined && value !== '', `vector field ${name}`);
  return value;
}

const hex = (v: Record<string, string>, name: string) => Buffer.from(field(v, name), 'hex');
const num = (v: Record<string, string>, name: string) => Number(field(v, name));

/** Section 7.3's key schedule by libsodium directly, not through HopKeys. */
function keySchedule(m: Buffer): { kf: Buffer; kbOrigin: Buffer; kbForward: Buffer; kx: Buffer } {
  const b2 = (key: Buffer, msg: Buffer, n: number) => {
    const out = Buffer.alloc(n);
    sodium.crypto_generichash(out, msg, key);
    return out;
  };
  const ascii = (t: string) => Buffer.from(t, 'ascii');
  const fr = b2(ascii('shallot-v2 forward root'), m, 32);
  const br = b2(ascii('shallot-v2 backward root'), m, 32);
  const kb = b2(br, ascii('shallot-v2 use backward'), 64);
  return {
    kf: b2(fr, ascii('shallot-v2 use forward'), 32),
    kbOrigin: kb.subarray(0, 32),
    kbForward: kb.subarray(32),
    kx: b2(br, ascii('shallot-v2 use header'), 16),
  };
}

/** A `random` for wrapForward/sealBackward that hands out the given buffers, in order. */
function fixedRandom(values: Buffer[]): { random: (buf: Buffer) => void; left: () => number } {
  const queue = values.map((b) => Buffer.from(b));
  return {
    random: (buf: Buffer) => {
      const next = queue.shift();
      assert.ok(next, 'random called more often than the vector has values');
      assert.equal(next.length, buf.length, 'random asked for a buffer of the documented length');
      next.copy(buf);
    },
    left: () => queue.length,
  };
}

test('vector circuit-create-v1: ntor with a 32-byte id, as CREATE and CREATED carry it', () => {
  const v = vector('circuit-create-v1');
  const id = hex(v, 'node_id');
  const b = hex(v, 'onion_secret');
  const B = Buffer.alloc(32);
  sodium.crypto_scalarmult_base(B, b);
  assert.equal(B.toString('hex'), field(v, 'onion_key'));
  const circId = parseInt(field(v, 'circ_id'), 16);

  const client = ntorClientCreate(id, B, hex(v, 'client_secret'));
  const create = encodeCreate(MSG_CREATE, circId, B, client.message);
  assert.equal(create.toString('hex'), field(v, 'create'));
  const c = decodeCreate(create, 1, create.length - 1);
  assert.ok(c);
  assert.equal(c.circId, circId);
  assert.ok(c.onionKey.equals(B));

  const server = ntorServerRespond(id, b, B, c.x, HOP_KEY_BYTES, hex(v, 'relay_secret'));
  assert.ok(server);
  assert.equal(server.keys.toString('hex'), field(v, 'key_material'));
  const created = encodeCreate(
    MSG_CREATED,
    circId,
    server.message.subarray(0, 32),
    server.message.subarray(32),
  );
  assert.equal(created.toString('hex'), field(v, 'created'));

  const d = decodeCreated(created, 1, created.length - 1);
  assert.ok(d);
  const keys = ntorClientFinish(client.state, Buffer.concat([d.y, d.auth]), HOP_KEY_BYTES);
  assert.ok(keys);
  assert.equal(keys.toString('hex'), field(v, 'key_material'));
  // What the key schedule makes of it: vector hop-keys-v2.
  assert.equal(keys.toString('hex'), field(vector('hop-keys-v2'), 'key_material'));

  // A relay under another id does not produce the same AUTH: the client refuses it.
  const other = ntorClientCreate(id, B, hex(v, 'client_secret'));
  const wrongId = Buffer.from(id);
  wrongId[0]! ^= 1;
  const forged = ntorServerRespond(wrongId, b, B, other.message, HOP_KEY_BYTES);
  assert.ok(forged);
  assert.equal(ntorClientFinish(other.state, forged.message, HOP_KEY_BYTES), null);

  const destroy = encodeDestroy(MSG_DESTROY, circId, num(v, 'destroy_reason'));
  assert.equal(destroy.toString('hex'), field(v, 'destroy'));
  assert.deepEqual(decodeDestroy(destroy, 1, destroy.length - 1), {
    circId,
    reason: num(v, 'destroy_reason'),
  });
});

test('vector hop-keys-v2: one key per use, each from a labelled BLAKE2b of the key material', () => {
  const v = vector('hop-keys-v2');
  const m = hex(v, 'key_material');
  assert.equal(m.length, HOP_KEY_BYTES);
  // By libsodium directly, as section 7.3 writes it.
  const b2 = (key: Buffer, msg: Buffer, n: number) => {
    const out = Buffer.alloc(n);
    sodium.crypto_generichash(out, msg, key);
    return out;
  };
  const ascii = (t: string) => Buffer.from(t, 'ascii');
  const fr = b2(ascii('shallot-v2 forward root'), m, 32);
  const br = b2(ascii('shallot-v2 backward root'), m, 32);
  assert.equal(fr.toString('hex'), field(v, 'forward_root'));
  assert.equal(br.toString('hex'), field(v, 'backward_root'));
  assert.equal(b2(fr, ascii('shallot-v2 use forward'), 32).toString('hex'), field(v, 'kf'));
  const kb = b2(br, ascii('shallot-v2 use backward'), 64);
  assert.equal(kb.subarray(0, 32).toString('hex'), field(v, 'kb_origin'));
  assert.equal(kb.subarray(32).toString('hex'), field(v, 'kb_forward'));
  assert.equal(b2(br, ascii('shallot-v2 use header'), 16).toString('hex'), field(v, 'kx'));

  // HopKeys holds the same keys.
  const hop = new HopKeys(m);
  assert.equal(hop.forward.toString('hex'), field(v, 'kf'));
  assert.equal(hop.backwardOrigin.toString('hex'), field(v, 'kb_origin'));
  assert.equal(hop.backwardForward.toString('hex'), field(v, 'kb_forward'));
  const x = Buffer.alloc(16);
  hop.permute(Buffer.alloc(16), x);
  const aes = createCipheriv('aes-128-ecb', hex(v, 'kx'), null).setAutoPadding(false);
  assert.ok(x.equals(aes.update(Buffer.alloc(16))), 'the header permutation is AES under Kx');
  // Every use has its own key.
  const all = [hop.forward, hop.backwardOrigin, hop.backwardForward].map((k) => k.toString('hex'));
  assert.equal(new Set(all).size, 3);
});

test('vector onion-forward-v2: the client wraps, hop 1 peels and forwards, hop 2 reads', () => {
  const v = vector('onion-forward-v2');
  const size = num(v, 'size');
  const k1 = hex(v, 'hop1_key_material');
  const k2 = hex(v, 'hop2_key_material');
  assert.equal(k1.length, HOP_KEY_BYTES);
  assert.equal(k2.length, HOP_KEY_BYTES);
  const payload = hex(v, 'payload');
  const r = fixedRandom([hex(v, 'hop1_nonce'), hex(v, 'hop2_nonce')]);
  const cell = Buffer.alloc(size);
  wrapForward(
    [new HopKeys(k1), new HopKeys(k2)],
    [num(v, 'hop1_seq'), num(v, 'hop2_seq')],
    payload,
    size,
    cell,
    new PaddingSource(hex(v, 'padding_key')),
    r.random,
  );
  assert.equal(r.left(), 0, 'one nonce per hop');
  assert.equal(cell.toString('hex'), field(v, 'cell'));

  // Hop 1 (the guard) verifies its tag, reads its sequence number, finds
  // the cell is not for it, and forwards a cell of the same size.
  const scratch = Buffer.alloc(size + 8);
  assert.equal(peelForward(new HopKeys(k1), cell, 0, size, scratch), num(v, 'hop1_seq'));
  assert.equal(scratch[0], parseInt(field(v, 'hop1_flags'), 16));
  assert.equal(scratch[0]! & SEQ_FLAG_FOR_THIS_HOP, 0);
  const forwarded = Buffer.from(scratch.subarray(8, 8 + size));
  assert.equal(forwarded.toString('hex'), field(v, 'hop1_forwards'));
  assert.equal(forwarded.subarray(0, NONCE_BYTES).toString('hex'), field(v, 'hop2_nonce'));
  // Its last 40 bytes are the filler: what hop 1 appended, which the client
  // had already put under hop 2's tag.
  assert.equal(forwarded.subarray(size - FORWARD_HOP_OVERHEAD).toString('hex'), field(v, 'filler'));
  // Checked independently of onion.ts: hop 1 appends its own keystream
  // Z(Kf_1, N_1 || 0^8)[64+S-32, 64+S+8), straight from libsodium.
  const z = Buffer.alloc(64 + size + 8);
  sodium.crypto_stream_xchacha20(
    z,
    Buffer.concat([hex(v, 'hop1_nonce'), Buffer.alloc(8)]),
    keySchedule(k1).kf,
  );
  assert.equal(z.subarray(64 + size - 32).toString('hex'), field(v, 'filler'));

  // Hop 2 verifies too and reads the relay message.
  assert.equal(peelForward(new HopKeys(k2), forwarded, 0, size, scratch), num(v, 'hop2_seq'));
  assert.equal(scratch[0], parseInt(field(v, 'hop2_flags'), 16));
  assert.equal(scratch[0]! & SEQ_FLAG_FOR_THIS_HOP, SEQ_FLAG_FOR_THIS_HOP, 'addressed to hop 2');
  const plain = Buffer.from(scratch.subarray(8, 8 + size));
  assert.equal(plain.subarray(0, payload.length).toString('hex'), field(v, 'hop2_reads'));
  const msg = decodeRelay(plain, 0, size);
  assert.ok(msg);
  assert.equal(msg.command, num(v, 'hop2_command'));
  assert.equal(
    plain.subarray(msg.bodyOffset, msg.bodyOffset + msg.bodyLength).toString('hex'),
    field(v, 'hop2_body'),
  );
  // After the payload: the padding source's output, not zeros.
  const padding = Buffer.alloc(forwardCapacity(size, 2) - payload.length);
  new PaddingSource(hex(v, 'padding_key')).fill(padding);
  assert.ok(plain.subarray(payload.length, forwardCapacity(size, 2)).equals(padding));

  // Each layer only opens with its own key.
  assert.equal(peelForward(new HopKeys(k2), cell, 0, size, Buffer.alloc(size + 8)), 0);
  assert.equal(peelForward(new HopKeys(k1), forwarded, 0, size, Buffer.alloc(size + 8)), 0);
  // A flipped bit anywhere in what hop 1 forwards is caught by hop 2.
  for (const pos of [0, 15, 16, 31, 32, 39, 40, 200, size - 40, size - 1]) {
    const tagged = Buffer.from(forwarded);
    tagged[pos]! ^= 0x01;
    assert.equal(
      peelForward(new HopKeys(k2), tagged, 0, size, Buffer.alloc(size + 8)),
      0,
      `flip at byte ${pos}`,
    );
  }
});

test('vector onion-backward-v2: the origin seals, hops 2 and 1 add their layers, the client opens', () => {
  const v = vector('onion-backward-v2');
  const size = num(v, 'size');
  const k1 = hex(v, 'hop1_key_material');
  const k2 = hex(v, 'hop2_key_material');
  const k3 = hex(v, 'hop3_key_material');
  const body = hex(v, 'body');
  const r = fixedRandom([hex(v, 'x')]);
  const cell = Buffer.alloc(size);
  sealBackward(new HopKeys(k3), num(v, 'seq'), body, size, cell, r.random);
  assert.equal(r.left(), 0, 'one X per cell');
  assert.equal(cell.toString('hex'), field(v, 'origin_cell'));

  assert.ok(layerBackward(new HopKeys(k2), num(v, 'hop2_counter'), cell, 0, size));
  assert.equal(cell.subarray(0, 16).toString('hex'), field(v, 'hop2_x'));
  assert.equal(cell.toString('hex'), field(v, 'hop2_cell'));
  assert.ok(layerBackward(new HopKeys(k1), num(v, 'hop1_counter'), cell, 0, size));
  assert.equal(cell.subarray(0, 16).toString('hex'), field(v, 'hop1_x'));
  assert.equal(cell.toString('hex'), field(v, 'cell'));

  assert.equal(keySchedule(k1).kx.toString('hex'), field(v, 'hop1_kx'));
  assert.equal(keySchedule(k1).kbForward.toString('hex'), field(v, 'hop1_kb_forward'));
  // Checked independently of onion.ts, with node's AES and libsodium's
  // XChaCha20: hop 1's header is AES(Kx_1, u64(c) || 0^8), and its body is
  // what it received, minus the last 16 bytes, under Z(Kb_f1, X' || 0^8).
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(BigInt(num(v, 'hop1_counter')), 0);
  const aes = createCipheriv('aes-128-ecb', Buffer.from(field(v, 'hop1_kx'), 'hex'), null);
  aes.setAutoPadding(false);
  assert.equal(aes.update(header).toString('hex'), field(v, 'hop1_x'));
  const z = Buffer.alloc(size - 16);
  sodium.crypto_stream_xchacha20(
    z,
    Buffer.concat([hex(v, 'hop1_x'), Buffer.alloc(8)]),
    Buffer.from(field(v, 'hop1_kb_forward'), 'hex'),
  );
  const received = hex(v, 'hop2_cell');
  for (let i = 0; i < size - 16; i += 1) {
    assert.equal(cell[16 + i], received[i]! ^ z[i]!, `byte ${16 + i} of hop 1's output`);
  }

  const keys = [new HopKeys(k1), new HopKeys(k2), new HopKeys(k3)];
  const opened = Buffer.from(cell);
  assert.equal(unwrapBackward(keys, 2, opened, 0, size), num(v, 'seq'));
  const at = BACKWARD_BODY_AT;
  assert.equal(opened.subarray(at, at + body.length).toString('hex'), field(v, 'body'));
  const cap = backwardCapacity(size);
  assert.ok(opened.subarray(at + body.length, at + cap).equals(Buffer.alloc(cap - body.length)));
  const msg = decodeRelay(opened, at, cap);
  assert.ok(msg);
  assert.equal(msg.command, num(v, 'command'));

  // Any change on the way, in a header or a body, fails at the client:
  // a header whose zero half does not decrypt, or the origin's tag.
  for (const pos of [0, 15, 16, 31, 32, 47, 48, 100, size - 33, size - 1]) {
    const tampered = Buffer.from(cell);
    tampered[pos]! ^= 0x80;
    const before = Buffer.from(tampered);
    assert.equal(unwrapBackward(keys, 2, tampered, 0, size), 0, `flip at byte ${pos}`);
    assert.ok(tampered.equals(before), 'a refused cell is left as it was');
  }
});

test('vector relay-extend-v1: EXTEND body and relay message', () => {
  const v = vector('relay-extend-v1');
  const host = parseIp(field(v, 'address'));
  assert.ok(host);
  const body = encodeExtend({
    targetId: hex(v, 'target_id'),
    host,
    port: num(v, 'port'),
    onionKey: hex(v, 'onion_key'),
    x: hex(v, 'x'),
  });
  assert.equal(body.toString('hex'), field(v, 'encoding'));
  const e = decodeExtend(body, 0, body.length);
  assert.ok(e);
  assert.equal(e.targetId.toString('hex'), field(v, 'target_id'));
  assert.equal(formatIp(e.host), field(v, 'address'));
  assert.equal(e.port, num(v, 'port'));
  assert.equal(e.onionKey.toString('hex'), field(v, 'onion_key'));
  assert.equal(e.x.toString('hex'), field(v, 'x'));

  const message = relayMessage(Relay.extend, body);
  assert.equal(message.toString('hex'), field(v, 'relay_message'));
  const m = decodeRelay(message, 0, message.length);
  assert.ok(m);
  assert.equal(m.command, Relay.extend);
  assert.equal(m.bodyLength, body.length);

  // The decoder's rules: a wrong length, family or a zero port is refused.
  assert.equal(decodeExtend(body, 0, body.length - 1), null);
  const badFamily = Buffer.from(body);
  badFamily[32] = 5;
  assert.equal(decodeExtend(badFamily, 0, badFamily.length), null);
  const zeroPort = Buffer.from(body);
  zeroPort.writeUInt16BE(0, 32 + 1 + host.length);
  assert.equal(decodeExtend(zeroPort, 0, zeroPort.length), null);
});

test('vector circuit-sizes-v2: the size arithmetic of section 8', () => {
  const v = vector('circuit-sizes-v2');
  assert.equal(num(v, 'link_datagram'), LINK_DATAGRAM_BYTES);
  assert.equal(num(v, 'link_message'), LINK_MESSAGE_BYTES);
  assert.equal(num(v, 'cell_large'), CELL_LARGE);
  assert.equal(num(v, 'cell_small'), CELL_SMALL);
  assert.equal(num(v, 'cell_large'), num(v, 'link_message') - 1 - 4);
  assert.equal(num(v, 'forward_nonce'), NONCE_BYTES);
  assert.equal(num(v, 'forward_hop_overhead'), FORWARD_HOP_OVERHEAD);
  assert.equal(num(v, 'max_hops'), MAX_HOPS);
  assert.equal(num(v, 'forward_capacity_large'), forwardCapacity(CELL_LARGE, MAX_HOPS));
  assert.equal(num(v, 'forward_capacity_small'), forwardCapacity(CELL_SMALL, MAX_HOPS));
  assert.equal(num(v, 'backward_capacity_large'), backwardCapacity(CELL_LARGE));
  assert.equal(num(v, 'backward_capacity_small'), backwardCapacity(CELL_SMALL));
  assert.equal(num(v, 'backward_tail'), BACKWARD_TAIL_BYTES);
  // A full packet's DATA message fits a large cell backward too.
  assert.ok(backwardCapacity(CELL_LARGE) >= CIRCUIT_MTU + RELAY_HEADER_BYTES);
  assert.equal(num(v, 'relay_header'), RELAY_HEADER_BYTES);
  assert.equal(num(v, 'circuit_mtu'), CIRCUIT_MTU);
  assert.equal(num(v, 'circuit_mtu'), num(v, 'forward_capacity_large') - num(v, 'relay_header'));
  assert.equal(num(v, 'replay_window'), REPLAY_WINDOW_SIZE);
  // IPv6 needs a link MTU of at least 1280 (RFC 8200 section 5): a TUN
  // device of the circuit MTU must be able to carry it at MAX_HOPS.
  assert.ok(CIRCUIT_MTU >= num(v, 'ipv6_min_mtu'), `circuit MTU ${CIRCUIT_MTU} >= 1280`);
  assert.equal(num(v, 'ipv6_min_mtu'), 1280);
  // The link message types of section 7.1.
  assert.deepEqual(
    [MSG_CREATE, MSG_CREATED, MSG_DESTROY, MSG_FORWARD, MSG_BACKWARD],
    [0x20, 0x21, 0x22, 0x23, 0x24],
  );
});

test('protocol version 2: AUTH says 2, and a version 1 AUTH is refused without a throw', () => {
  const auth = encodeAuth({
    role: ROLE_DIALER,
    publicKey: Buffer.alloc(32, 1),
    signature: Buffer.alloc(64, 2),
    attributes: Buffer.alloc(0),
  });
  assert.equal(AUTH_VERSION, 2);
  assert.equal(auth[1], 2);
  assert.ok(decodeAuth(auth, 0, auth.length));
  const v1 = Buffer.from(auth);
  v1[1] = 1;
  assert.equal(decodeAuth(v1, 0, v1.length), null, 'a version 1 peer does not get a link');
  assert.equal(authVersionOf(v1, 0, v1.length), 1, 'the endpoint can say which version it was');
  assert.equal(authVersionOf(v1, 0, 1), null);
});

test('vector circuit-limits-v1: the timers and limits of section 7.6', () => {
  const v = vector('circuit-limits-v1');
  assert.equal(num(v, 'max_circuits'), MAX_CIRCUITS);
  assert.equal(num(v, 'max_circuits_per_link'), MAX_CIRCUITS_PER_LINK);
  assert.equal(num(v, 'max_extend_targets'), MAX_EXTEND_TARGETS);
  assert.equal(num(v, 'circuit_idle_ms'), CIRCUIT_IDLE_MS);
  assert.equal(num(v, 'extend_timeout_ms'), EXTEND_TIMEOUT_MS);
  assert.equal(num(v, 'create_resend_ms'), CREATE_RESEND_MS);
  assert.equal(num(v, 'step_timeout_ms'), STEP_TIMEOUT_MS);
  assert.equal(num(v, 'step_resend_ms'), STEP_RESEND_MS);
  assert.equal(num(v, 'ping_idle_ms'), PING_IDLE_MS);
  assert.equal(num(v, 'circuit_dead_ms'), CIRCUIT_DEAD_MS);
  assert.equal(num(v, 'avoid_failed_ms'), AVOID_FAILED_MS);
});
