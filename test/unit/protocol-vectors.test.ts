// Checks the test vectors written in docs/protocol.md against the code, so
// the document and the implementation cannot drift apart.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import sodium from 'sodium-native';
import { decodeAddresses, encodeAddresses } from '../../src/direct/attributes.js';
import { authTranscript, signAuth, verifyAuth } from '../../src/link/auth.js';
import {
  decodeClose,
  decodeRekey,
  encodeClose,
  MSG_REKEY,
  type CloseReasonCode,
} from '../../src/link/messages.js';
import { loadDtls, LISTEN_VERIFIED } from '../../src/native/binding.js';
import { parseCidr } from '../../src/net/cidr.js';
import { networkInfoHash } from '../../src/discovery/dht-node.js';
import {
  decodeKeyAnswer,
  decodeKeyQuery,
  encodeKeyAnswer,
  encodeKeyQuery,
  isKeyQuery,
  verifyKeyAnswer,
} from '../../src/discovery/key-query.js';

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

const hex = (s: string | undefined) => Buffer.from(s ?? '', 'hex');

test('vector auth-v1: transcript and Ed25519 signature', () => {
  const v = vector('auth-v1');
  const pk = Buffer.alloc(32);
  const sk = Buffer.alloc(64);
  sodium.crypto_sign_seed_keypair(pk, sk, hex(v.seed));
  assert.equal(pk.toString('hex'), v.public_key);
  const cert = Buffer.from(v.certificate_der_ascii ?? '', 'latin1');
  const role = Number(v.role);
  const t = authTranscript(role, cert, hex(v.exporter), hex(v.attributes));
  assert.equal(t.toString('hex'), v.transcript);
  const sig = signAuth(sk, role, cert, hex(v.exporter), hex(v.attributes));
  assert.equal(sig.toString('hex'), v.signature);
  assert.ok(verifyAuth(pk, sig, role, cert, hex(v.exporter), hex(v.attributes)));
  // Any change of role, certificate, exporter or attributes breaks it.
  assert.ok(!verifyAuth(pk, sig, 1 - role, cert, hex(v.exporter), hex(v.attributes)));
  assert.ok(!verifyAuth(pk, sig, role, Buffer.from('other'), hex(v.exporter), hex(v.attributes)));
  assert.ok(!verifyAuth(pk, sig, role, cert, Buffer.alloc(32), hex(v.attributes)));
  assert.ok(!verifyAuth(pk, sig, role, cert, hex(v.exporter), Buffer.from([0])));
});

test('vector close-v1', () => {
  const v = vector('close-v1');
  const enc = encodeClose(Number(v.reason) as CloseReasonCode);
  assert.equal(enc.toString('hex'), v.encoding);
  assert.equal(decodeClose(enc, 0, enc.length), Number(v.reason));
});

test('vector addresses-v1', () => {
  const v = vector('addresses-v1');
  const list = (v.addresses ?? '').split(' ').map((a) => parseCidr(a));
  assert.equal(encodeAddresses(list).toString('hex'), v.encoding);
  assert.deepEqual(
    decodeAddresses(hex(v.encoding))?.map((c) => c.text),
    list.map((c) => c.text),
  );
});

test('vector dht-infohash-v1 and key-query-v2', () => {
  const v = vector('dht-infohash-v1');
  assert.equal(networkInfoHash(v.network ?? '').toString('hex'), v.infohash);
  assert.equal(networkInfoHash(v.network2 ?? '').toString('hex'), v.infohash2);
  const k = vector('key-query-v2');
  const seed = hex(k.seed);
  const pk = Buffer.alloc(32);
  const sk = Buffer.alloc(64);
  sodium.crypto_sign_seed_keypair(pk, sk, seed);
  assert.equal(pk.toString('hex'), k.public_key);
  const nonce = hex(k.nonce);
  assert.equal(encodeKeyQuery(nonce).toString('hex'), k.query);
  assert.equal(encodeKeyAnswer(pk, sk, nonce).toString('hex'), k.answer);
  assert.ok(isKeyQuery(hex(k.query)));
  assert.deepEqual(decodeKeyQuery(hex(k.query)), nonce);
  assert.deepEqual(verifyKeyAnswer(hex(k.answer), nonce), pk);
  assert.deepEqual(decodeKeyAnswer(hex(k.answer))?.publicKey, pk);
  assert.equal(verifyKeyAnswer(hex(k.answer), Buffer.alloc(32)), null, 'another nonce');
  assert.equal(decodeKeyAnswer(hex(k.answer).subarray(0, 100)), null);
  assert.equal(isKeyQuery(hex(k.query).subarray(0, 127)), false);
});

test('vector rekey-v2: a REKEY message carries one whole DTLS datagram', () => {
  const v = vector('rekey-v2');
  const enc = hex(v.encoding);
  assert.equal(enc[0], MSG_REKEY);
  assert.equal(decodeRekey(enc, 0, enc.length)?.toString('hex'), v.datagram);
  const bad = hex(v.malformed);
  assert.equal(decodeRekey(bad, 0, bad.length), null);
});

test('vector epoch0-window-v2: which epoch-0 numbers reach DTLS, across the wrap', () => {
  const v = vector('epoch0-window-v2');
  const D = loadDtls();
  const server = new D.DtlsContext({ ...D.generateCertificate(), mtu: 1400 });
  const client = new D.DtlsContext({ ...D.generateCertificate(), mtu: 1400 });
  const buf = Buffer.alloc(65_536);
  const out = Buffer.alloc(65_536);
  const first = (n: number): Buffer => {
    assert.ok(n > 2, 'a datagram was queued');
    return Buffer.from(buf.subarray(2, 2 + buf.readUInt16BE(0)));
  };
  const peer = Buffer.from('192.0.2.1|1');
  /** A listener session whose verified ClientHello carried number `base`. */
  const accepted = (base: Buffer) => {
    const c = client.connect();
    c.pump();
    const hello1 = first(c.flush(buf));
    const n = server.listen(hello1, peer, out);
    assert.ok(n > 0);
    c.receive(Buffer.from(out.subarray(0, n)), buf);
    const hello2 = first(c.flush(buf));
    base.copy(hello2, 5);
    assert.equal(server.listen(hello2, peer, out), LISTEN_VERIFIED);
    const s = server.accept();
    assert.equal(s.receive(null, out), 0);
    c.free();
    return s;
  };
  const alert = (seq: string): Buffer =>
    Buffer.concat([Buffer.from('15fefd0000', 'hex'), hex(seq), Buffer.from('00020228', 'hex')]);
  for (const seq of (v.accepted ?? '').split(' ')) {
    const s = accepted(hex(v.base));
    assert.equal(s.receive(alert(seq), out), -1, `${seq} reaches DTLS (a fatal alert)`);
    s.free();
  }
  for (const seq of (v.dropped ?? '').split(' ')) {
    const s = accepted(hex(v.base));
    assert.equal(s.receive(alert(seq), out), 0, `${seq} is dropped`);
    assert.equal(s.error(), '');
    s.free();
  }
});
