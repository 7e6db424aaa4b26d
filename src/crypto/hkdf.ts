/**
 * HKDF with HMAC-SHA256 (RFC 5869): Extract-then-Expand.
 *
 *   PRK = HMAC-SHA256(key = salt, message = IKM)
 *   T(0) = empty; T(i) = HMAC-SHA256(key = PRK, message = T(i-1) | info | i)
 *   OKM = first `length` bytes of T(1) | T(2) | ...
 *
 * Used by the ntor handshake (src/crypto/ntor.ts), where tor-spec's
 * KDF-RFC5869 is this function with salt = t_key, IKM = secret_input,
 * info = m_expand. Intermediate secrets (PRK, each T(i)) are wiped.
 */
import { createHmac } from 'node:crypto';
import sodium from 'sodium-native';

/** SHA-256 output length, RFC 5869's HashLen. */
export const HKDF_SHA256_HASH_LEN = 32;
/** RFC 5869 caps the output at 255 * HashLen bytes. */
export const HKDF_SHA256_MAX_LENGTH = 255 * HKDF_SHA256_HASH_LEN;

function hmacSha256(key: Buffer, ...parts: Buffer[]): Buffer {
  const h = createHmac('sha256', key);
  for (const p of parts) h.update(p);
  return h.digest();
}

/** RFC 5869 HKDF-Extract: PRK = HMAC-SHA256(salt, IKM). An empty salt means HashLen zero bytes. */
export function hkdfSha256Extract(ikm: Buffer, salt: Buffer): Buffer {
  // HMAC pads a short key with zeros, so an empty key and RFC 5869's default
  // salt (HashLen zero bytes) give the same PRK; be explicit anyway.
  const key = salt.length === 0 ? Buffer.alloc(HKDF_SHA256_HASH_LEN) : salt;
  return hmacSha256(key, ikm);
}

/**
 * RFC 5869 HKDF-Expand. Throws RangeError if `length` is not an integer in
 * 0..8160 (255 * HashLen) or the PRK is shorter than HashLen.
 */
export function hkdfSha256Expand(prk: Buffer, info: Buffer, length: number): Buffer {
  checkLength(length);
  if (prk.length < HKDF_SHA256_HASH_LEN) {
    throw new RangeError(`HKDF-Expand: PRK must be at least ${HKDF_SHA256_HASH_LEN} bytes`);
  }
  // Buffer.alloc (not allocUnsafe) so the output never lives in the shared pool.
  const out = Buffer.alloc(length);
  const counter = Buffer.alloc(1);
  let previous: Buffer = Buffer.alloc(0);
  for (let i = 1, off = 0; off < length; i++) {
    counter[0] = i;
    const t = hmacSha256(prk, previous, info, counter);
    sodium.sodium_memzero(previous);
    off += t.copy(out, off, 0, Math.min(t.length, length - off));
    previous = t;
  }
  sodium.sodium_memzero(previous);
  return out;
}

/** RFC 5869 HKDF with SHA-256: Expand(Extract(salt, ikm), info, length). */
export function hkdfSha256(ikm: Buffer, salt: Buffer, info: Buffer, length: number): Buffer {
  checkLength(length);
  const prk = hkdfSha256Extract(ikm, salt);
  try {
    return hkdfSha256Expand(prk, info, length);
  } finally {
    sodium.sodium_memzero(prk);
  }
}

function checkLength(length: number): void {
  if (!Number.isInteger(length) || length < 0 || length > HKDF_SHA256_MAX_LENGTH) {
    throw new RangeError(
      `HKDF-SHA256 output length must be an integer in 0..${HKDF_SHA256_MAX_LENGTH}`,
    );
  }
}
