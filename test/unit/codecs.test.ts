// Known-answer tests for the link and direct-mode codecs, and their
// rejection of malformed input.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeAddresses, encodeAddresses } from '../../src/direct/attributes.js';
import {
  AUTH_FIXED_BYTES,
  decodeAuth,
  decodeClose,
  encodeAuth,
  encodeClose,
  CloseReason,
  ROLE_DIALER,
} from '../../src/link/messages.js';
import { authTranscript } from '../../src/link/auth.js';
import { parseCidr } from '../../src/net/cidr.js';

test('AUTH encodes to the documented layout (known answer)', () => {
  const msg = encodeAuth({
    role: ROLE_DIALER,
    publicKey: Buffer.alloc(32, 0xaa),
    signature: Buffer.alloc(64, 0xbb),
    attributes: Buffer.from([1, 4, 24, 10, 9, 0, 2]),
  });
  // type 0x01, version 2 (docs/protocol.md 4.1), role 0.
  const expected = '010200' + 'aa'.repeat(32) + 'bb'.repeat(64) + '0007' + '01041' + '80a090002';
  assert.equal(msg.toString('hex'), expected);
  const back = decodeAuth(msg, 0, msg.length);
  assert.ok(back);
  assert.equal(back.role, ROLE_DIALER);
  assert.deepEqual(back.attributes, Buffer.from([1, 4, 24, 10, 9, 0, 2]));
});

test('AUTH decoder rejects every truncation and bad fields', () => {
  const msg = encodeAuth({
    role: 1,
    publicKey: Buffer.alloc(32, 1),
    signature: Buffer.alloc(64, 2),
    attributes: Buffer.from([0]),
  });
  for (let n = 0; n < msg.length; n += 1) assert.equal(decodeAuth(msg, 0, n), null);
  const badVersion = Buffer.from(msg);
  badVersion[1] = 9;
  assert.equal(decodeAuth(badVersion, 0, badVersion.length), null);
  const badRole = Buffer.from(msg);
  badRole[2] = 7;
  assert.equal(decodeAuth(badRole, 0, badRole.length), null);
  const longer = Buffer.concat([msg, Buffer.from([0])]);
  assert.equal(decodeAuth(longer, 0, longer.length), null);
  assert.equal(decodeAuth(msg, 5, msg.length), null, 'offset past the end');
  assert.equal(AUTH_FIXED_BYTES, 101);
});

test('CLOSE round trip and rejection', () => {
  const c = encodeClose(CloseReason.unauthorized);
  assert.equal(c.toString('hex'), '0201');
  assert.equal(decodeClose(c, 0, 2), 1);
  assert.equal(decodeClose(c, 0, 1), null);
  assert.equal(decodeClose(Buffer.from([3, 1]), 0, 2), null);
});

test('address attributes: known answer, round trip, rejection', () => {
  const list = [parseCidr('10.9.0.2/24'), parseCidr('fd09::2/64')];
  const enc = encodeAddresses(list);
  assert.equal(
    enc.toString('hex'),
    '02' + '0418' + '0a090002' + '0640' + 'fd090000000000000000000000000002',
  );
  const dec = decodeAddresses(enc);
  assert.ok(dec);
  assert.deepEqual(
    dec.map((c) => c.text),
    ['10.9.0.2/24', 'fd09::2/64'],
  );
  for (let n = 0; n < enc.length; n += 1) assert.equal(decodeAddresses(enc.subarray(0, n)), null);
  assert.equal(decodeAddresses(Buffer.from([1, 4, 33, 1, 2, 3, 4])), null, 'prefix > 32');
  assert.equal(decodeAddresses(Buffer.from([1, 5, 8, 1, 2, 3, 4])), null, 'family 5');
  assert.equal(decodeAddresses(Buffer.from([9])), null, 'too many');
});

test('auth transcript layout (known answer)', () => {
  const t = authTranscript(1, Buffer.from('cert'), Buffer.alloc(32, 7), Buffer.from([0]));
  // context (21) + role (1) + sha256(cert) (32) + exporter (32) + sha256(attrs) (32)
  assert.equal(t.length, 21 + 1 + 32 + 32 + 32);
  assert.equal(t.subarray(0, 21).toString('latin1'), 'shallot link auth v1\0');
  assert.equal(t[21], 1);
  // SHA-256("cert")
  assert.equal(
    t.subarray(22, 54).toString('hex'),
    '06298432e8066b29e2223bcc23aa9504b56ae508fabf3435508869b9c3190e22',
  );
  assert.deepEqual(t.subarray(54, 86), Buffer.alloc(32, 7));
});
