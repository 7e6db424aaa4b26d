/**
 * Node identity: a long-term Ed25519 key (the node id is its public key in
 * hex), an X25519 onion key for circuit handshakes, and the ECDSA P-256
 * link certificate that DTLS presents (OpenSSL 3.0 cannot do DTLS 1.2 with
 * Ed25519 certificates). The identity vouches for the link certificate by
 * signing over the DTLS session it is used in (see src/link/auth.ts).
 *
 * State directory layout (directory 0700, every file 0600):
 *   identity.key   hex of the 32-byte Ed25519 seed
 *   onion.key      hex of the 32-byte X25519 secret
 *   link-key.pem   ECDSA P-256 private key of the link certificate
 *   link-cert.pem  the self-signed link certificate
 */
import fs from 'node:fs';
import path from 'node:path';
import sodium from 'sodium-native';
import { errors } from './errors.js';
import { loadDtls } from './native/binding.js';

export const NODE_ID_HEX_LENGTH = 64;

export interface LinkCertificate {
  certPem: string;
  keyPem: string;
  /** SHA-256 of the certificate's DER. */
  fingerprint: Buffer;
}

export interface Identity {
  /** Hex of the Ed25519 public key. */
  id: string;
  publicKey: Buffer;
  /** libsodium's 64-byte Ed25519 secret key (seed || public key). */
  secretKey: Buffer;
  /** Replaced in place by rotateOnionKey. */
  onionPublic: Buffer;
  onionSecret: Buffer;
  link: LinkCertificate;
}

const FILES = {
  identity: 'identity.key',
  onion: 'onion.key',
  linkKey: 'link-key.pem',
  linkCert: 'link-cert.pem',
} as const;

/** Parse a node id (64 hex digits); null if it is not one. */
export function parseNodeId(text: string): Buffer | null {
  const t = text.trim().toLowerCase();
  if (t.length !== NODE_ID_HEX_LENGTH || !/^[0-9a-f]+$/.test(t)) return null;
  return Buffer.from(t, 'hex');
}

export function nodeIdOf(publicKey: Buffer): string {
  return publicKey.toString('hex');
}

export function signDetached(secretKey: Buffer, message: Buffer): Buffer {
  const sig = Buffer.alloc(sodium.crypto_sign_BYTES);
  sodium.crypto_sign_detached(sig, message, secretKey);
  return sig;
}

export function verifyDetached(publicKey: Buffer, message: Buffer, signature: Buffer): boolean {
  if (publicKey.length !== sodium.crypto_sign_PUBLICKEYBYTES) return false;
  if (signature.length !== sodium.crypto_sign_BYTES) return false;
  return sodium.crypto_sign_verify_detached(signature, message, publicKey);
}

function ed25519FromSeed(seed: Buffer): { publicKey: Buffer; secretKey: Buffer } {
  const publicKey = Buffer.alloc(sodium.crypto_sign_PUBLICKEYBYTES);
  const secretKey = sodium.sodium_malloc(sodium.crypto_sign_SECRETKEYBYTES);
  sodium.crypto_sign_seed_keypair(publicKey, secretKey, seed);
  return { publicKey, secretKey };
}

export function x25519Public(secret: Buffer): Buffer {
  const pub = Buffer.alloc(sodium.crypto_scalarmult_BYTES);
  sodium.crypto_scalarmult_base(pub, secret);
  return pub;
}

/** A throw-away identity and link certificate, kept in memory only. */
export function ephemeralIdentity(): Identity {
  const seed = sodium.sodium_malloc(32);
  sodium.randombytes_buf(seed);
  const onionSecret = sodium.sodium_malloc(32);
  sodium.randombytes_buf(onionSecret);
  const { publicKey, secretKey } = ed25519FromSeed(seed);
  sodium.sodium_memzero(seed);
  return {
    id: nodeIdOf(publicKey),
    publicKey,
    secretKey,
    onionSecret,
    onionPublic: x25519Public(onionSecret),
    link: newLinkCertificate(),
  };
}

export function newLinkCertificate(): LinkCertificate {
  const dtls = loadDtls();
  const { certPem, keyPem } = dtls.generateCertificate();
  return { certPem, keyPem, fingerprint: dtls.certificateFingerprint(certPem) };
}

function writeSecret(file: string, data: string): void {
  // 'wx' after an unlink: never follow a planted file, never widen a mode.
  try {
    fs.unlinkSync(file);
  } catch {
    /* did not exist */
  }
  const fd = fs.openSync(file, 'wx', 0o600);
  try {
    fs.writeSync(fd, data);
    fs.fchmodSync(fd, 0o600);
  } finally {
    fs.closeSync(fd);
  }
}

function ensureStateDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw errors.badArgument(`cannot create state directory ${dir}: ${(e as Error).message}`);
  }
  const st = fs.statSync(dir);
  if (!st.isDirectory()) throw errors.badArgument(`state path ${dir} is not a directory`);
}

export function identityExists(dir: string): boolean {
  return fs.existsSync(path.join(dir, FILES.identity));
}

/** Create a new identity in `dir`; refuses to replace one unless `force`. */
export function keygen(dir: string, options: { force?: boolean } = {}): Identity {
  ensureStateDir(dir);
  if (identityExists(dir) && !options.force) throw errors.identityExists(dir);
  const seed = sodium.sodium_malloc(32);
  sodium.randombytes_buf(seed);
  const onionSecret = sodium.sodium_malloc(32);
  sodium.randombytes_buf(onionSecret);
  const link = newLinkCertificate();
  writeSecret(path.join(dir, FILES.onion), onionSecret.toString('hex') + '\n');
  writeSecret(path.join(dir, FILES.linkKey), link.keyPem);
  writeSecret(path.join(dir, FILES.linkCert), link.certPem);
  // The identity file last: its presence means the set is complete.
  writeSecret(path.join(dir, FILES.identity), seed.toString('hex') + '\n');
  const { publicKey, secretKey } = ed25519FromSeed(seed);
  sodium.sodium_memzero(seed);
  return {
    id: nodeIdOf(publicKey),
    publicKey,
    secretKey,
    onionSecret,
    onionPublic: x25519Public(onionSecret),
    link,
  };
}

function readKeyHex(file: string, bytes: number): Buffer {
  let text: string;
  try {
    const st = fs.statSync(file);
    if ((st.mode & 0o077) !== 0) {
      throw errors.badKeyFile(
        file,
        `mode ${(st.mode & 0o777).toString(8)} lets others read it (chmod 600)`,
      );
    }
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw errors.badKeyFile(file, 'missing');
    throw e;
  }
  if (text.length !== bytes * 2 || !/^[0-9a-fA-F]+$/.test(text)) {
    throw errors.badKeyFile(file, `expected ${bytes * 2} hex digits`);
  }
  const out = sodium.sodium_malloc(bytes);
  out.write(text, 'hex');
  return out;
}

function readPem(file: string, secret: boolean): string {
  try {
    if (secret) {
      const st = fs.statSync(file);
      if ((st.mode & 0o077) !== 0) throw errors.badKeyFile(file, 'readable by others (chmod 600)');
    }
    const text = fs.readFileSync(file, 'utf8');
    if (!text.includes('-----BEGIN')) throw errors.badKeyFile(file, 'not PEM');
    return text;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw errors.badKeyFile(file, 'missing');
    throw e;
  }
}

/** Load the identity kept in `dir`. */
export function loadIdentity(dir: string): Identity {
  if (!identityExists(dir)) throw errors.noIdentity(dir);
  const seed = readKeyHex(path.join(dir, FILES.identity), 32);
  const onionSecret = readKeyHex(path.join(dir, FILES.onion), 32);
  const keyPem = readPem(path.join(dir, FILES.linkKey), true);
  const certPem = readPem(path.join(dir, FILES.linkCert), false);
  const { publicKey, secretKey } = ed25519FromSeed(seed);
  sodium.sodium_memzero(seed);
  let fingerprint: Buffer;
  try {
    fingerprint = loadDtls().certificateFingerprint(certPem);
  } catch (e) {
    throw errors.badKeyFile(path.join(dir, FILES.linkCert), (e as Error).message);
  }
  return {
    id: nodeIdOf(publicKey),
    publicKey,
    secretKey,
    onionSecret,
    onionPublic: x25519Public(onionSecret),
    link: { certPem, keyPem, fingerprint },
  };
}

/** How often a relay replaces its onion key, and how long the old one still works. */
export const ONION_KEY_ROTATE_S = 7 * 24 * 3600;
export const ONION_KEY_GRACE_S = 24 * 3600;

export interface OnionKeyPair {
  secret: Buffer;
  public: Buffer;
}

/** Age of the current onion key in seconds (from its file's modification time). */
export function onionKeyAgeS(dir: string, now = Date.now()): number {
  try {
    return (now - fs.statSync(path.join(dir, FILES.onion)).mtimeMs) / 1000;
  } catch {
    return 0;
  }
}

/**
 * Replace the onion key: the current one moves to onion.key.prev (still
 * accepted for ONION_KEY_GRACE_S), a fresh one becomes current. Updates
 * `identity` in place and returns the previous pair.
 */
export function rotateOnionKey(dir: string, identity: Identity): OnionKeyPair {
  const previous = { secret: identity.onionSecret, public: identity.onionPublic };
  writeSecret(path.join(dir, `${FILES.onion}.prev`), previous.secret.toString('hex') + '\n');
  const secret = sodium.sodium_malloc(32);
  sodium.randombytes_buf(secret);
  writeSecret(path.join(dir, FILES.onion), secret.toString('hex') + '\n');
  identity.onionSecret = secret;
  identity.onionPublic = x25519Public(secret);
  return previous;
}

/** The previous onion key if it is still within its grace period, else null. */
export function loadPreviousOnionKey(
  dir: string,
  now = Date.now(),
): (OnionKeyPair & { until: number }) | null {
  const file = path.join(dir, `${FILES.onion}.prev`);
  try {
    const retiredAt = fs.statSync(file).mtimeMs;
    const until = retiredAt + ONION_KEY_GRACE_S * 1000;
    if (now >= until) return null;
    const secret = readKeyHex(file, 32);
    return { secret, public: x25519Public(secret), until };
  } catch {
    return null;
  }
}
