/**
 * Relay descriptors: known answer, round trip, canonical encoding, and the
 * verifier's rejections (bit flips, truncations, random input, wrong field
 * types, other signers, time window, network, size); relay files.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Packr } from 'msgpackr';
import sodium from 'sodium-native';
import {
  DESCRIPTOR_MAX_BYTES,
  type Descriptor,
  type DescriptorFields,
  type DescriptorResult,
  descriptorFromText,
  descriptorToText,
  signDescriptor,
  verifyDescriptor,
} from '../../src/descriptor/descriptor.js';
import { RELAY_FILE_MAX_LINES, loadRelayFile } from '../../src/descriptor/relay-list.js';
import { ShallotError, isUserError } from '../../src/errors.js';
import type { Identity } from '../../src/identity.js';
import { parseHostPort } from '../../src/net/cidr.js';

const seq = (start: number, n = 32) => Buffer.from(Array.from({ length: n }, (_, i) => start + i));

function identityFromSeed(seed: Buffer, onion: Buffer, link: Buffer): Identity {
  const publicKey = Buffer.alloc(32);
  const secretKey = Buffer.alloc(64);
  sodium.crypto_sign_seed_keypair(publicKey, secretKey, seed);
  return {
    id: publicKey.toString('hex'),
    publicKey,
    secretKey,
    onionPublic: onion,
    onionSecret: Buffer.alloc(32),
    link: { certPem: '', keyPem: '', fingerprint: link },
  };
}

function randomIdentity(): Identity {
  const seed = Buffer.alloc(32);
  sodium.randombytes_buf(seed);
  const onion = Buffer.alloc(32);
  sodium.randombytes_buf(onion);
  const link = Buffer.alloc(32);
  sodium.randombytes_buf(link);
  return identityFromSeed(seed, onion, link);
}

/** Seed 0x01..0x20 (the same key as docs/protocol.md vector auth-v1). */
const KAT_IDENTITY = identityFromSeed(seq(0x01), seq(0x21), seq(0x41));
const KAT_FIELDS: DescriptorFields = {
  addresses: [
    { host: '203.0.113.7', port: 9001 },
    { host: '2001:db8::7', port: 443 },
  ],
  roles: { relay: true, exit: true },
  policy: 'accept 80,443',
  bandwidth: 1250,
  published: 1700000000,
  expires: 1700086400,
  network: 'shallot',
};
const KAT_BODY =
  '9b01c42079b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664' +
  'c4202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40' +
  'c4204142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f60' +
  '9292c404cb007107cd232992c41020010db8000000000000000000000007cd01bb' +
  '03ad6163636570742038302c343433cd04e2ce6553f100ce65554280a77368616c6c6f74';
const KAT_SIGNATURE =
  'fc0fd6f578a0adc1e5cff48f95815bf9e897c00826f5396c959e6a7ed67365bd' +
  '5e7039f83648a61e09b118082e689bee1159bbcfc4ae6bd012807a185beb8a0b';
const KAT_WIRE = '92c4ad' + KAT_BODY + 'c440' + KAT_SIGNATURE;
const KAT_TEXT =
  'ksStmwHEIHm1Vi6P5lT5QHixEuipi6eQH4U65pW-1-DjkQutBJZkxCAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4_' +
  'QMQgQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpbXF1eX2CSksQEywBxB80jKZLEECABDbgAAAAAAAAAAAAAAAfNAbsDrWFj' +
  'Y2VwdCA4MCw0NDPNBOLOZVPxAM5lVUKAp3NoYWxsb3TEQPwP1vV4oK3B5c_0j5WBW_nol8AIJvU5bJWean7Wc2W9XnA5-DZI' +
  'ph4JsRgILmib7hFZu8_ErmvQEoB6GFvrigs';

const NOW = KAT_FIELDS.published + 60;
const OPTS = { now: NOW, network: 'shallot' };
const CONTEXT = Buffer.from('shallot descriptor v1\0', 'latin1');

// An independent encoder for hand-built (often invalid) descriptors.
const packr = new Packr({ useRecords: false });
const pack = (v: unknown): Buffer => Buffer.from(packr.pack(v));

function signBody(secretKey: Buffer, body: Buffer): Buffer {
  const sig = Buffer.alloc(64);
  sodium.crypto_sign_detached(sig, Buffer.concat([CONTEXT, body]), secretKey);
  return sig;
}

/** Wire bytes for an arbitrary body value, signed correctly by `identity`. */
function handBuilt(body: unknown, identity = KAT_IDENTITY): Buffer {
  const b = pack(body);
  return pack([b, signBody(identity.secretKey, b)]);
}

/** The KAT body as raw msgpack values, for hand-built variants. */
function katBodyArray(): unknown[] {
  return [
    1,
    KAT_IDENTITY.publicKey,
    KAT_IDENTITY.onionPublic,
    KAT_IDENTITY.link.fingerprint,
    [
      [Buffer.from([203, 0, 113, 7]), 9001],
      [Buffer.from('20010db8000000000000000000000007', 'hex'), 443],
    ],
    3,
    'accept 80,443',
    1250,
    1700000000,
    1700086400,
    'shallot',
  ];
}

function reason(r: DescriptorResult): string {
  return r.ok ? 'ok' : r.reason;
}

/** Deterministic PRNG (mulberry32), so that a failure reproduces. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('known answer: canonical body, signature, wire and text', () => {
  const wire = signDescriptor(KAT_IDENTITY, KAT_FIELDS);
  assert.equal(wire.toString('hex'), KAT_WIRE);
  assert.equal(wire.length, 242);
  assert.equal(descriptorToText(wire), KAT_TEXT);
  // The signature is over the context string and the body bytes.
  const body = Buffer.from(KAT_BODY, 'hex');
  assert.equal(signBody(KAT_IDENTITY.secretKey, body).toString('hex'), KAT_SIGNATURE);
  // An independent msgpack encoding of the array gives the same body.
  assert.equal(pack(katBodyArray()).toString('hex'), KAT_BODY);
  const r = verifyDescriptor(wire, OPTS);
  assert.ok(r.ok);
  assert.deepEqual(r.descriptor, {
    ...KAT_FIELDS,
    id: '79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664',
    publicKey: KAT_IDENTITY.publicKey,
    onionKey: seq(0x21),
    linkFingerprint: seq(0x41),
  } satisfies Descriptor);
  assert.ok(r.wire.equals(wire));
});

test('docs/protocol.md vector descriptor-v1 matches (once the section is in the document)', (t) => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const docPath = path.resolve(here, '..', '..', '..', 'docs', 'protocol.md');
  const doc = fs.existsSync(docPath) ? fs.readFileSync(docPath, 'utf8') : '';
  const m = /```vector descriptor-v1\n([\s\S]*?)```/.exec(doc);
  if (!m?.[1]) {
    t.skip('docs/protocol.md has no vector descriptor-v1 yet');
    return;
  }
  const v: Record<string, string> = {};
  for (const line of m[1].trim().split('\n')) {
    const i = line.indexOf(':');
    v[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  const hex = (s: string | undefined) => Buffer.from(s ?? '', 'hex');
  const identity = identityFromSeed(hex(v.seed), hex(v.onion_key), hex(v.link_fingerprint));
  assert.equal(identity.id, v.public_key);
  const roles = Number(v.roles);
  const fields: DescriptorFields = {
    addresses: (v.addresses ?? '').split(' ').map((a) => parseHostPort(a, 'address')),
    roles: { relay: (roles & 1) !== 0, exit: (roles & 2) !== 0 },
    policy: v.policy ?? '',
    bandwidth: Number(v.bandwidth),
    published: Number(v.published),
    expires: Number(v.expires),
    network: v.network ?? '',
  };
  const wire = signDescriptor(identity, fields);
  assert.equal(wire.toString('hex'), v.wire);
  assert.equal(wire.subarray(3, 3 + (wire[2] ?? 0)).toString('hex'), v.body);
  assert.equal(signBody(identity.secretKey, hex(v.body)).toString('hex'), v.signature);
  assert.equal(descriptorToText(wire), v.text);
  const r = verifyDescriptor(wire, { now: fields.published, network: fields.network });
  assert.ok(r.ok);
  assert.deepEqual(r.descriptor.addresses, fields.addresses);
});

test('round trip: random identities and fields, wire and text', () => {
  const rand = prng(7);
  for (let i = 0; i < 50; i += 1) {
    const identity = randomIdentity();
    const exit = rand() < 0.5;
    const published = Math.floor(rand() * 2 ** 31);
    const fields: DescriptorFields = {
      addresses: [
        { host: `10.${i}.0.1`, port: 1 + Math.floor(rand() * 65535) },
        { host: `fd00::${i.toString(16)}:1`, port: 65535 },
        { host: '127.0.0.1', port: 9001 },
      ].slice(0, 1 + (i % 3)),
      roles: { relay: !exit || rand() < 0.5, exit },
      policy: exit ? 'accept 1-65535' : '',
      bandwidth: Math.floor(rand() * 2 ** 32),
      published,
      expires: published + 1 + Math.floor(rand() * 7 * 86400),
      network: i % 2 ? 'shallot' : 'test-net.1',
    };
    const wire = signDescriptor(identity, fields);
    assert.ok(wire.length <= DESCRIPTOR_MAX_BYTES);
    const back = descriptorFromText(descriptorToText(wire));
    assert.ok(back && back.equals(wire));
    const r = verifyDescriptor(back, { now: published, network: fields.network });
    assert.ok(r.ok, reason(r));
    assert.deepEqual(r.descriptor, {
      ...fields,
      id: identity.id,
      publicKey: identity.publicKey,
      onionKey: identity.onionPublic,
      linkFingerprint: identity.link.fingerprint,
    });
    // Signing again is byte-identical (canonical and deterministic).
    assert.ok(signDescriptor(identity, fields).equals(wire));
  }
});

test('the largest descriptor the field limits allow fits in 996 bytes', () => {
  const wire = signDescriptor(KAT_IDENTITY, {
    addresses: [1, 2, 3, 4].map((i) => ({
      host: `ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff${i}`,
      port: 65535,
    })),
    roles: { relay: true, exit: true },
    policy: '~'.repeat(200),
    bandwidth: 2 ** 32 - 1,
    published: 2 ** 32 - 1 - 7 * 86400,
    expires: 2 ** 32 - 1,
    network: 'n'.repeat(32),
  });
  assert.equal(wire.length, 515);
  assert.ok(verifyDescriptor(wire, { now: 2 ** 32 - 2, network: 'n'.repeat(32) }).ok);
});

test('every single-bit flip of the wire is rejected', () => {
  const wire = Buffer.from(KAT_WIRE, 'hex');
  const reasons = new Map<string, number>();
  for (let i = 0; i < wire.length; i += 1) {
    for (let bit = 0; bit < 8; bit += 1) {
      const w = Buffer.from(wire);
      w[i] = (w[i] as number) ^ (1 << bit);
      const r = verifyDescriptor(w, OPTS);
      // Canonical encoding: no flip, even in msgpack framing, decodes to an
      // equal descriptor; were one to verify, it would have to be identical.
      if (r.ok) {
        assert.fail(`flip of byte ${i} bit ${bit} verified`);
      }
      reasons.set(r.reason, (reasons.get(r.reason) ?? 0) + 1);
    }
  }
  assert.ok(!reasons.has('oversize'));
  assert.ok((reasons.get('bad-signature') ?? 0) > 0);
  assert.ok((reasons.get('malformed') ?? 0) > 0);
  assert.ok((reasons.get('bad-field') ?? 0) > 0);
});

test('every truncation and every extension is rejected', () => {
  const wire = Buffer.from(KAT_WIRE, 'hex');
  for (let n = 0; n < wire.length; n += 1) {
    assert.equal(reason(verifyDescriptor(wire.subarray(0, n), OPTS)), 'malformed', `length ${n}`);
  }
  for (const tail of [[0x00], [0xc0], [0x92], Array<number>(100).fill(0)]) {
    const w = Buffer.concat([wire, Buffer.from(tail)]);
    assert.equal(reason(verifyDescriptor(w, OPTS)), 'malformed');
  }
});

test('random bytes and random mutations never throw and never verify', () => {
  const rand = prng(20240601);
  const wire = Buffer.from(KAT_WIRE, 'hex');
  for (let i = 0; i < 10_000; i += 1) {
    const n = Math.floor(rand() * 1100);
    const b = Buffer.alloc(n);
    for (let j = 0; j < n; j += 1) b[j] = Math.floor(rand() * 256);
    // Half start like a descriptor, to get past the first byte more often.
    if (i % 2 && n > 3) b.set([0x92, 0xc4, Math.floor(rand() * 256)], 0);
    const r = verifyDescriptor(b, OPTS);
    assert.ok(!r.ok);
    if (n > DESCRIPTOR_MAX_BYTES) assert.equal(r.reason, 'oversize');
  }
  for (let i = 0; i < 10_000; i += 1) {
    const w = Buffer.from(wire);
    const changes = 1 + Math.floor(rand() * 4);
    for (let k = 0; k < changes; k += 1) {
      const at = Math.floor(rand() * w.length);
      const before = w[at];
      w[at] = Math.floor(rand() * 256);
      if (k === 0 && w[at] === before) w[at] = (before as number) ^ 0xff;
    }
    assert.ok(!verifyDescriptor(w, OPTS).ok);
  }
});

test('random well-formed msgpack bodies, correctly signed, never throw', (t) => {
  const rand = prng(99);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)] as T;
  const values = (): unknown[] => [
    null,
    true,
    -1,
    0,
    1,
    2,
    3,
    255,
    65535,
    65536,
    2 ** 32 - 1,
    2 ** 32,
    2 ** 53,
    1.5,
    NaN,
    '',
    'x',
    'é',
    'shallot',
    Buffer.alloc(0),
    Buffer.alloc(4),
    Buffer.alloc(16),
    Buffer.alloc(32),
    Buffer.alloc(64),
    [],
    [Buffer.alloc(4), 1],
    [[Buffer.alloc(4), 1]],
    new Map([['a', 1]]),
    { v: 1 },
    2n ** 64n - 1n,
    -(2n ** 63n),
  ];
  let accepted = 0;
  for (let i = 0; i < 3000; i += 1) {
    const body = katBodyArray();
    const changes = 1 + Math.floor(rand() * 3);
    for (let k = 0; k < changes; k += 1) body[Math.floor(rand() * 11)] = pick(values());
    if (rand() < 0.1) body.length = Math.floor(rand() * 13);
    const wire = handBuilt(body);
    const r = verifyDescriptor(wire, OPTS);
    if (r.ok) {
      // Whatever verifies is exactly what the signer makes of those fields.
      accepted += 1;
      const signer: Identity = {
        ...KAT_IDENTITY,
        onionPublic: r.descriptor.onionKey,
        link: { ...KAT_IDENTITY.link, fingerprint: r.descriptor.linkFingerprint },
      };
      assert.ok(signDescriptor(signer, r.descriptor).equals(wire));
    }
  }
  t.diagnostic(`${accepted} of 3000 mutated bodies were valid descriptors`);
});

test('wrong type, length or range in each field is bad-field, even when correctly signed', () => {
  const ip4 = Buffer.from([203, 0, 113, 7]);
  const bad: [number, unknown][] = [];
  const add = (field: number, ...vs: unknown[]) => vs.forEach((v) => bad.push([field, v]));
  add(0, 0, 2, '1', null, true, 1.5, Buffer.from([1]), [1]);
  for (const f of [1, 2, 3]) {
    add(f, Buffer.alloc(31), Buffer.alloc(33), Buffer.alloc(0), 'ab'.repeat(32), null, 0, [
      ...Buffer.alloc(32),
    ]);
  }
  add(
    4,
    [],
    null,
    'addrs',
    Array<unknown>(5).fill([ip4, 9001]),
    [[ip4]],
    [[ip4, 9001, 1]],
    [[Buffer.alloc(5), 9001]],
    [[Buffer.alloc(0), 9001]],
    [['203.0.113.7', 9001]],
    [[ip4, 0]],
    [[ip4, 65536]],
    [[ip4, -1]],
    [[ip4, 1.5]],
    [[ip4, '9001']],
    [[ip4, 9001n]],
    [
      [ip4, 9001],
      [ip4, 9001],
    ],
    [new Map([[0, ip4]])],
    [ip4, 9001],
  );
  add(5, 0, 4, 7, -1, 255, '3', true, 1.5, null);
  add(6, 'x'.repeat(201), 'é', 'a\nb', '\x7f', Buffer.from('accept 80'), 80, null);
  add(7, -1, 2 ** 32, 1.5, '1250', null, 2n ** 64n - 1n);
  add(8, -1, 2 ** 32, 1.5, '1', null, 1700086400, 1700086401, 1700086400 - 7 * 86400 - 1);
  add(9, -1, 2 ** 32, 1.5, '1', null, 1700000000, 1699999999, 1700000000 + 7 * 86400 + 1);
  add(10, '', 'x'.repeat(33), 'shallot net', 'shalløt', Buffer.from('shallot'), 7, null);
  for (const [field, value] of bad) {
    const body = katBodyArray();
    body[field] = value;
    const r = verifyDescriptor(handBuilt(body), OPTS);
    assert.equal(reason(r), 'bad-field', `field ${field} = ${String(value)}`);
  }
  // A relay that is not an exit carries an empty policy.
  const relayOnly = katBodyArray();
  relayOnly[5] = 1;
  assert.equal(reason(verifyDescriptor(handBuilt(relayOnly), OPTS)), 'bad-field');
  relayOnly[6] = '';
  assert.equal(reason(verifyDescriptor(handBuilt(relayOnly), OPTS)), 'ok');
  // Limits themselves are accepted.
  const edge = katBodyArray();
  edge[6] = '~'.repeat(200);
  edge[9] = 1700000000 + 7 * 86400;
  edge[10] = 'a'.repeat(32);
  assert.equal(
    reason(verifyDescriptor(handBuilt(edge), { ...OPTS, network: 'a'.repeat(32) })),
    'ok',
  );
});

test('wrong shapes are malformed: arity, outer array, non-canonical encodings', () => {
  const body = Buffer.from(KAT_BODY, 'hex');
  const sig = Buffer.from(KAT_SIGNATURE, 'hex');
  const cases: [string, Buffer][] = [
    ['10 fields', handBuilt(katBodyArray().slice(0, 10))],
    ['12 fields', handBuilt([...katBodyArray(), 0])],
    ['body is a map', handBuilt(new Map([['v', 1]]))],
    ['body is a number', handBuilt(1)],
    ['outer has 3 items', pack([body, sig, 0])],
    ['outer has 1 item', pack([body])],
    ['outer is a map', pack(new Map([[0, body]]))],
    ['body is a string', pack([body.toString('latin1'), sig])],
    ['signature 63 bytes', pack([body, sig.subarray(0, 63)])],
    ['signature 65 bytes', pack([body, Buffer.concat([sig, Buffer.alloc(1)])])],
  ];
  // Outer array as array16, body as bin16: same values, longer framing.
  cases.push([
    'array16',
    Buffer.concat([Buffer.from('dc0002c4ad', 'hex'), body, Buffer.from('c440', 'hex'), sig]),
  ]);
  cases.push([
    'bin16',
    Buffer.concat([Buffer.from('92c500ad', 'hex'), body, Buffer.from('c440', 'hex'), sig]),
  ]);
  // Correctly signed bodies with one value in a longer form than needed.
  const nonCanonical = [
    ['9b01', 'dc000b01'], // array16 for 11 fields
    ['9b01', '9bcc01'], // v as uint8
    ['cd2329', 'ce00002329'], // port 9001 as uint32
    ['03ad', 'cc03ad'], // roles as uint8
    ['ad616363', 'd90d616363'], // policy as str8
    ['a773', 'd90773'], // network as str8
    ['c42079b5', 'c5002079b5'], // id as bin16
  ];
  for (const [from, to] of nonCanonical as [string, string][]) {
    let at = KAT_BODY.indexOf(from);
    while (at % 2 !== 0) at = KAT_BODY.indexOf(from, at + 1); // whole bytes only
    assert.ok(at >= 0, from);
    const b = Buffer.from(KAT_BODY.slice(0, at) + to + KAT_BODY.slice(at + from.length), 'hex');
    cases.push([`body ${to}`, pack([b, signBody(KAT_IDENTITY.secretKey, b)])]);
  }
  for (const [name, w] of cases) {
    assert.equal(reason(verifyDescriptor(w, OPTS)), 'malformed', name);
  }
  for (const x of [undefined, null, 'text', 42, {}, [1, 2]]) {
    assert.equal(reason(verifyDescriptor(x as unknown as Buffer, OPTS)), 'malformed');
  }
  // A Uint8Array is accepted like a Buffer.
  assert.ok(verifyDescriptor(new Uint8Array(Buffer.from(KAT_WIRE, 'hex')) as Buffer, OPTS).ok);
});

test('signed by another key than the one in id: bad-signature', () => {
  const other = randomIdentity();
  // The body names the KAT key but another key signs it.
  const w1 = handBuilt(katBodyArray(), other);
  assert.equal(reason(verifyDescriptor(w1, OPTS)), 'bad-signature');
  // The body names the other key but the KAT key signs it.
  const body = katBodyArray();
  body[1] = other.publicKey;
  const w2 = handBuilt(body, KAT_IDENTITY);
  assert.equal(reason(verifyDescriptor(w2, OPTS)), 'bad-signature');
  // A signature without the context string does not verify.
  const b = Buffer.from(KAT_BODY, 'hex');
  const bare = Buffer.alloc(64);
  sodium.crypto_sign_detached(bare, b, KAT_IDENTITY.secretKey);
  assert.equal(reason(verifyDescriptor(pack([b, bare]), OPTS)), 'bad-signature');
  // A mismatched secret key is caught when signing.
  const broken = { ...KAT_IDENTITY, secretKey: other.secretKey };
  assert.throws(
    () => signDescriptor(broken, KAT_FIELDS),
    (e) => e instanceof ShallotError && e.kind === 'internal',
  );
});

test('validity window with clock skew, and network name', () => {
  const wire = Buffer.from(KAT_WIRE, 'hex');
  const { published: pub, expires: exp } = KAT_FIELDS;
  const at = (now: number, clockSkewS?: number) =>
    reason(verifyDescriptor(wire, { now, network: 'shallot', clockSkewS }));
  assert.equal(at(pub), 'ok');
  assert.equal(at(pub - 300), 'ok');
  assert.equal(at(pub - 301), 'not-yet-valid');
  assert.equal(at(pub - 1, 0), 'not-yet-valid');
  assert.equal(at(pub, 0), 'ok');
  assert.equal(at(pub - 3600, 3600), 'ok');
  assert.equal(at(exp - 1, 0), 'ok');
  assert.equal(at(exp, 0), 'expired');
  assert.equal(at(exp + 299), 'ok');
  assert.equal(at(exp + 300), 'expired');
  assert.equal(at(exp + 86400 * 30), 'expired');
  assert.equal(at(0), 'not-yet-valid');
  // A nonsense clock or skew fails closed, or falls back to the default skew.
  assert.notEqual(at(NaN), 'ok');
  assert.equal(at(pub - 301, NaN), 'not-yet-valid');
  assert.equal(at(pub - 301, -5), 'not-yet-valid');
  assert.equal(at(pub - 301, Infinity), 'not-yet-valid');
  assert.equal(reason(verifyDescriptor(wire, { now: NOW, network: 'testnet' })), 'wrong-network');
  assert.equal(reason(verifyDescriptor(wire, { now: NOW, network: 'Shallot' })), 'wrong-network');
  assert.equal(reason(verifyDescriptor(wire, { now: exp + 9999, network: 'x' })), 'wrong-network');
});

test('oversize: anything over 996 bytes, before decoding', () => {
  const wire = Buffer.from(KAT_WIRE, 'hex');
  const padded = Buffer.concat([wire, Buffer.alloc(DESCRIPTOR_MAX_BYTES + 1 - wire.length)]);
  assert.equal(reason(verifyDescriptor(padded, OPTS)), 'oversize');
  assert.equal(reason(verifyDescriptor(padded.subarray(0, 996), OPTS)), 'malformed');
  // A correctly signed descriptor that is too large, as a signer without the limit would make.
  const body = katBodyArray();
  body[6] = 'x'.repeat(900);
  const big = handBuilt(body);
  assert.ok(big.length > DESCRIPTOR_MAX_BYTES);
  assert.equal(reason(verifyDescriptor(big, OPTS)), 'oversize');
  assert.equal(reason(verifyDescriptor(Buffer.alloc(1 << 20), OPTS)), 'oversize');
});

test('signDescriptor refuses bad fields with a user error', () => {
  const bad: Partial<DescriptorFields>[] = [
    { addresses: [] },
    { addresses: Array(5).fill({ host: '10.0.0.1', port: 1 }) as DescriptorFields['addresses'] },
    { addresses: [{ host: 'example.com', port: 1 }] },
    { addresses: [{ host: '10.0.0.1', port: 0 }] },
    { addresses: [{ host: '10.0.0.1', port: 70000 }] },
    {
      addresses: [
        { host: '2001:db8::1', port: 1 },
        { host: '2001:0db8:0::1', port: 1 },
      ],
    },
    { roles: { relay: false, exit: false } },
    { roles: { relay: true, exit: false } }, // with the KAT's non-empty policy
    { policy: 'x'.repeat(201) },
    { policy: 'accept\t80' },
    { bandwidth: -1 },
    { bandwidth: 1.5 },
    { published: 2 ** 32 },
    { expires: KAT_FIELDS.published },
    { expires: KAT_FIELDS.published + 7 * 86400 + 1 },
    { network: '' },
    { network: 'x'.repeat(33) },
    { network: 'two words' },
  ];
  for (const change of bad) {
    assert.throws(
      () => signDescriptor(KAT_IDENTITY, { ...KAT_FIELDS, ...change }),
      (e) => isUserError(e) && e.code === 'BAD_DESCRIPTOR' && !e.message.includes('\n'),
      JSON.stringify(change),
    );
  }
  const noLink = { ...KAT_IDENTITY, link: { ...KAT_IDENTITY.link, fingerprint: Buffer.alloc(20) } };
  assert.throws(() => signDescriptor(noLink, KAT_FIELDS), ShallotError);
});

test('text form: unpadded base64url only, one canonical text per wire', () => {
  const wire = Buffer.from(KAT_WIRE, 'hex');
  assert.ok(descriptorFromText(KAT_TEXT)?.equals(wire));
  assert.ok(descriptorFromText(`  ${KAT_TEXT}\r\n`)?.equals(wire));
  assert.equal(descriptorToText(wire).includes('='), false);
  assert.equal(descriptorFromText(''), null);
  assert.equal(descriptorFromText(KAT_TEXT + '='), null);
  assert.equal(descriptorFromText(KAT_TEXT.replace(/-/g, '+')), null);
  assert.equal(descriptorFromText(KAT_TEXT.slice(0, 10) + ' ' + KAT_TEXT.slice(10)), null);
  assert.equal(KAT_TEXT.length % 4, 3);
  assert.equal(descriptorFromText(KAT_TEXT + 'AA'), null); // a dangling character
  assert.equal(descriptorFromText('AB'), null); // non-zero unused bits ('AA' is the canonical one)
  assert.ok(descriptorFromText('AA')?.equals(Buffer.from([0])));
  assert.equal(descriptorFromText('A'.repeat(100_000)), null);
  assert.equal(descriptorFromText(42 as unknown as string), null);
});

const tmpDirs: string[] = [];
after(() => {
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

function tmpDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shallot-desc-'));
  tmpDirs.push(dir);
  return dir;
}

function tmpFile(content: string): string {
  const dir = tmpDir();
  const file = path.join(dir, 'relays.txt');
  fs.writeFileSync(file, content);
  return file;
}

test('relay file: good, bad and duplicate lines, counted', () => {
  const a = randomIdentity();
  const b = randomIdentity();
  const c = randomIdentity();
  const t0 = 1_800_000_000;
  const fields = (published: number, network = 'shallot'): DescriptorFields => ({
    addresses: [{ host: '10.1.2.3', port: 9001 }],
    roles: { relay: true, exit: false },
    policy: '',
    bandwidth: 100,
    published,
    expires: published + 86400,
    network,
  });
  const text = (id: Identity, f: DescriptorFields) => descriptorToText(signDescriptor(id, f));
  const tampered = signDescriptor(c, fields(t0));
  tampered[tampered.length - 1] = (tampered[tampered.length - 1] as number) ^ 1;
  const aNew = text(a, fields(t0 + 10));
  const lines = [
    '# relays for the test network',
    '',
    '   ',
    text(a, fields(t0)),
    text(b, fields(t0)),
    aNew,
    text(a, fields(t0 - 10)), // older: dropped
    'not base64 !!!',
    Buffer.from('hello world').toString('base64url'),
    text(c, fields(t0 - 3 * 86400)), // expired
    text(c, fields(t0 + 3600)), // not yet valid
    text(c, fields(t0, 'other-net')),
    descriptorToText(tampered),
    Buffer.alloc(1000, 0x41).toString('base64url'), // oversize
    '  # an indented comment',
    text(c, fields(t0 - 5)) + '\r', // CRLF line ending
    'x'.repeat(50_000), // absurdly long
    text(b, fields(t0)), // exact duplicate
  ];
  const file = tmpFile(lines.join('\n')); // no final line break
  const r = loadRelayFile(file, { now: t0 + 20, network: 'shallot' });
  assert.deepEqual(
    r.relays.map((d) => [d.id, d.published]),
    [
      [a.id, t0 + 10],
      [b.id, t0],
      [c.id, t0 - 5],
    ],
  );
  assert.deepEqual(r.counts, {
    malformed: 3,
    oversize: 1,
    'bad-signature': 1,
    expired: 1,
    'not-yet-valid': 1,
    'wrong-network': 1,
    'bad-field': 0,
  });
  assert.equal(r.duplicates, 3);
  assert.equal(r.truncated, false);
  // Newest wins regardless of order.
  const reversed = loadRelayFile(tmpFile([...lines].reverse().join('\n') + '\n'), {
    now: t0 + 20,
    network: 'shallot',
  });
  assert.deepEqual(
    new Map(reversed.relays.map((d) => [d.id, d.published])),
    new Map([
      [a.id, t0 + 10],
      [b.id, t0],
      [c.id, t0 - 5],
    ]),
  );
  assert.deepEqual(reversed.counts, r.counts);
  // Empty file.
  const empty = loadRelayFile(tmpFile(''), { now: t0, network: 'shallot' });
  assert.deepEqual(empty.relays, []);
  assert.equal(empty.truncated, false);
});

test('relay file: at most 10,000 lines are considered', () => {
  const id = randomIdentity();
  const t0 = 1_800_000_000;
  const line = descriptorToText(
    signDescriptor(id, {
      addresses: [{ host: '10.1.2.3', port: 9001 }],
      roles: { relay: true, exit: false },
      policy: '',
      bandwidth: 1,
      published: t0,
      expires: t0 + 3600,
      network: 'shallot',
    }),
  );
  const filler = Array<string>(RELAY_FILE_MAX_LINES - 1).fill('# filler');
  const opts = { now: t0, network: 'shallot' };
  const inside = loadRelayFile(tmpFile([...filler, line].join('\n') + '\n'), opts);
  assert.equal(inside.relays.length, 1);
  assert.equal(inside.truncated, false);
  const outside = loadRelayFile(tmpFile([...filler, '', line].join('\n')), opts);
  assert.equal(outside.relays.length, 0);
  assert.equal(outside.truncated, true);
  // A source with no line breaks at all costs bounded time and memory.
  if (fs.existsSync('/dev/zero')) {
    const zero = loadRelayFile('/dev/zero', opts);
    assert.equal(zero.relays.length, 0);
    assert.equal(zero.truncated, true);
  }
});

test('relay file: missing or unreadable file is a one-line user error', () => {
  const dir = tmpDir();
  for (const [file, words] of [
    [path.join(dir, 'nope.txt'), 'does not exist'],
    [dir, 'is a directory'],
  ] as const) {
    assert.throws(
      () => loadRelayFile(file, { now: 0, network: 'shallot' }),
      (e) =>
        isUserError(e) &&
        e.code === 'BAD_RELAY_FILE' &&
        e.message.includes(file) &&
        e.message.includes(words) &&
        !e.message.includes('\n'),
    );
  }
});
