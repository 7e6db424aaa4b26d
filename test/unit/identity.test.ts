// The identity library: keys on disk and back, throw-away identities, node
// id parsing, detached signatures.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { ShallotError } from '../../src/errors.js';
import {
  ephemeralIdentity,
  identityExists,
  keygen,
  loadIdentity,
  nodeIdOf,
  NODE_ID_HEX_LENGTH,
  parseNodeId,
  signDetached,
  verifyDetached,
} from '../../src/identity.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function stateDir(): string {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'shallot-identity-'));
  dirs.push(base);
  return path.join(base, 'state');
}

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ShallotError, `a ShallotError, got ${String(e)}`);
    return e.code;
  }
  assert.fail('expected an error');
}

test('keygen then loadIdentity: the same node id, keys and link certificate', () => {
  const dir = stateDir();
  assert.equal(identityExists(dir), false);
  const made = keygen(dir);
  assert.equal(identityExists(dir), true);
  assert.equal(fs.statSync(dir).mode & 0o777, 0o700);
  for (const f of fs.readdirSync(dir)) {
    assert.equal(fs.statSync(path.join(dir, f)).mode & 0o777, 0o600, f);
  }
  const loaded = loadIdentity(dir);
  assert.match(made.id, /^[0-9a-f]{64}$/);
  assert.equal(loaded.id, made.id);
  assert.equal(nodeIdOf(loaded.publicKey), loaded.id);
  assert.ok(loaded.publicKey.equals(made.publicKey));
  assert.ok(loaded.onionPublic.equals(made.onionPublic), 'same onion key');
  assert.ok(loaded.link.fingerprint.equals(made.link.fingerprint), 'same link fingerprint');
  assert.equal(loaded.link.fingerprint.length, 32);
  assert.equal(loaded.link.certPem, made.link.certPem);
  // The loaded secret key is the one that belongs to the id.
  const msg = Buffer.from('round trip');
  assert.ok(verifyDetached(made.publicKey, msg, signDetached(loaded.secretKey, msg)));
  // Loading twice gives the same again.
  assert.equal(loadIdentity(dir).id, made.id);
});

test('keygen refuses to replace an identity unless forced', () => {
  const dir = stateDir();
  const first = keygen(dir);
  assert.equal(
    code(() => keygen(dir)),
    'IDENTITY_EXISTS',
  );
  assert.equal(loadIdentity(dir).id, first.id, 'unchanged after the refusal');
  const second = keygen(dir, { force: true });
  assert.notEqual(second.id, first.id);
  assert.ok(!second.link.fingerprint.equals(first.link.fingerprint), 'new link certificate');
  assert.equal(loadIdentity(dir).id, second.id);
});

test('loadIdentity refuses a missing identity, open modes and damaged files', () => {
  const dir = stateDir();
  assert.equal(
    code(() => loadIdentity(dir)),
    'NO_IDENTITY',
  );
  keygen(dir);
  const id = path.join(dir, 'identity.key');
  fs.chmodSync(id, 0o644);
  assert.throws(() => loadIdentity(dir), /chmod 600/);
  assert.equal(
    code(() => loadIdentity(dir)),
    'BAD_KEY_FILE',
  );
  fs.chmodSync(id, 0o600);
  fs.writeFileSync(id, 'not hex\n');
  assert.throws(() => loadIdentity(dir), /64 hex digits/);
  fs.writeFileSync(path.join(dir, 'identity.key'), 'ab'.repeat(32) + '\n');
  fs.rmSync(path.join(dir, 'onion.key'));
  assert.throws(() => loadIdentity(dir), /onion\.key is unusable: missing/);
});

test('ephemeralIdentity differs every time', () => {
  const a = ephemeralIdentity();
  const b = ephemeralIdentity();
  assert.match(a.id, /^[0-9a-f]{64}$/);
  assert.notEqual(a.id, b.id);
  assert.ok(!a.onionPublic.equals(b.onionPublic));
  assert.ok(!a.link.fingerprint.equals(b.link.fingerprint));
  assert.equal(nodeIdOf(a.publicKey), a.id);
});

test('parseNodeId accepts 64 hex digits in any case and nothing else', () => {
  const hex = '0123456789abcdef'.repeat(4);
  assert.equal(hex.length, NODE_ID_HEX_LENGTH);
  for (const text of [hex, hex.toUpperCase(), hex.slice(0, 32) + hex.slice(32).toUpperCase()]) {
    const b = parseNodeId(text);
    assert.ok(b, text);
    assert.equal(b.length, 32);
    assert.equal(b.toString('hex'), hex);
  }
  assert.ok(parseNodeId(` ${hex}\n`), 'surrounding white space is ignored');
  for (const bad of [
    '',
    hex.slice(1),
    hex + '0',
    hex.slice(0, 63) + 'g',
    '0x' + hex.slice(2),
    hex.slice(0, 32) + ' ' + hex.slice(33),
    hex.slice(0, 62) + '-1',
    'z'.repeat(64),
    '\u0660'.repeat(64), // Arabic-Indic digits are not hex
  ]) {
    assert.equal(parseNodeId(bad), null, JSON.stringify(bad));
  }
});

test('signDetached / verifyDetached', () => {
  const a = ephemeralIdentity();
  const b = ephemeralIdentity();
  const msg = Buffer.from('a message');
  const sig = signDetached(a.secretKey, msg);
  assert.equal(sig.length, 64);
  assert.ok(verifyDetached(a.publicKey, msg, sig));
  assert.ok(signDetached(a.secretKey, msg).equals(sig), 'Ed25519 is deterministic');
  assert.ok(!verifyDetached(b.publicKey, msg, sig), 'wrong key');
  assert.ok(!verifyDetached(a.publicKey, Buffer.from('a massage'), sig), 'other message');
  for (let i = 0; i < sig.length; i += 7) {
    const bad = Buffer.from(sig);
    bad[i] = (bad[i] as number) ^ 1;
    assert.ok(!verifyDetached(a.publicKey, msg, bad), `flipped bit in byte ${i}`);
  }
  // Wrong sizes are a plain false, never a throw.
  assert.equal(verifyDetached(a.publicKey.subarray(1), msg, sig), false);
  assert.equal(verifyDetached(a.publicKey, msg, sig.subarray(1)), false);
  assert.equal(verifyDetached(Buffer.alloc(0), msg, Buffer.alloc(0)), false);
  assert.ok(
    verifyDetached(a.publicKey, Buffer.alloc(0), signDetached(a.secretKey, Buffer.alloc(0))),
  );
});
