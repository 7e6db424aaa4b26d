/**
 * Tor's ntor circuit handshake (tor-spec "The ntor handshake", proposal
 * 216), over X25519 with HMAC-SHA256 and HKDF-SHA256, byte for byte as Tor
 * specifies it, so that Tor's published known-answer vectors pass.
 *
 *   PROTOID  = "ntor-curve25519-sha256-1"
 *   t_mac    = PROTOID | ":mac"
 *   t_key    = PROTOID | ":key_extract"
 *   t_verify = PROTOID | ":verify"
 *   m_expand = PROTOID | ":key_expand"
 *   H(x, t)  = HMAC-SHA256 with key t over message x
 *
 * The server (identity ID, onion key pair b/B) receives X from a client that
 * already knows ID and B, picks y, Y = EXP(g, y), and computes
 *
 *   secret_input = EXP(X,y) | EXP(X,b) | ID | B | X | Y | PROTOID
 *   verify       = H(secret_input, t_verify)
 *   auth_input   = verify | ID | B | Y | X | PROTOID | "Server"
 *   AUTH         = H(auth_input, t_mac)
 *
 * and replies Y | AUTH. The client computes the same secret_input with
 * EXP(Y,x) | EXP(B,x) and accepts only if AUTH matches (constant-time
 * compare). Both sides refuse if either DH output is all zero (X, Y or B of
 * small order, the "point at infinity" check of the spec). Key material is
 * tor-spec's KDF-RFC5869: HKDF-SHA256 with salt = t_key, IKM = secret_input,
 * info = m_expand (so KEY_SEED = H(secret_input, t_key) is HKDF's PRK).
 *
 * Differences from Tor, by design: Tor's ID is the 20-byte RSA identity
 * digest; shallot uses the 32-byte Ed25519 public key. The ID length is a
 * parameter (1..64 bytes), so Tor's 20-byte vectors exercise the same code.
 * Tor's client handshake is ID | B | X; here the client message is X alone
 * (the framing around it says which node and onion key it is meant for).
 *
 * State is use-once: ntorClientFinish consumes the client state whatever the
 * outcome and wipes the ephemeral secret x. Secret intermediates
 * (DH outputs, secret_input, verify) are wiped with sodium_memzero.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import sodium from 'sodium-native';
import { HKDF_SHA256_MAX_LENGTH, hkdfSha256 } from './hkdf.js';

export const NTOR_PROTOID = 'ntor-curve25519-sha256-1';

/** Length of X25519 public keys, secrets and DH outputs. */
export const NTOR_KEY_LENGTH = 32;
/** The client's message: X. */
export const NTOR_CLIENT_MESSAGE_LENGTH = NTOR_KEY_LENGTH;
/** The server's message: Y | AUTH. */
export const NTOR_SERVER_MESSAGE_LENGTH = NTOR_KEY_LENGTH + 32;
/** Accepted identity (ID) lengths: Tor uses 20, shallot 32. */
export const NTOR_ID_MIN_LENGTH = 1;
export const NTOR_ID_MAX_LENGTH = 64;
/** Most key material one handshake can produce (HKDF-SHA256's limit). */
export const NTOR_MAX_KEY_BYTES = HKDF_SHA256_MAX_LENGTH;

const PROTOID = Buffer.from(NTOR_PROTOID, 'latin1');
const T_MAC = Buffer.from(NTOR_PROTOID + ':mac', 'latin1');
const T_KEY = Buffer.from(NTOR_PROTOID + ':key_extract', 'latin1');
const T_VERIFY = Buffer.from(NTOR_PROTOID + ':verify', 'latin1');
const M_EXPAND = Buffer.from(NTOR_PROTOID + ':key_expand', 'latin1');
const SERVER = Buffer.from('Server', 'latin1');

/** Opaque client-side state between ntorClientCreate and ntorClientFinish. */
export interface NtorClientState {
  readonly __ntorClientState: never;
}

interface ClientSecrets {
  id: Buffer;
  B: Buffer;
  x: Buffer;
  X: Buffer;
}

// The state handed out is an empty frozen object; what it stands for lives
// here, so callers cannot read x and a consumed state is simply absent.
const clientStates = new WeakMap<NtorClientState, ClientSecrets>();
/** Client states created and neither finished nor discarded (x still held). */
let liveClientStates = 0;

/** How many client handshakes hold an ephemeral secret now (for tests). */
export function ntorClientStatesLive(): number {
  return liveClientStates;
}

/**
 * Start a handshake with the node whose identity is `id` (1..64 bytes) and
 * whose onion public key is `serverOnionPublic` (B, 32 bytes). `randomX` (32
 * bytes) replaces the random ephemeral secret, for known-answer tests only;
 * it is copied, the caller's buffer is left alone. Throws RangeError on
 * wrong argument lengths (these are local values, not peer input).
 */
export function ntorClientCreate(
  id: Buffer,
  serverOnionPublic: Buffer,
  randomX?: Buffer,
): { state: NtorClientState; message: Buffer } {
  if (!isId(id)) {
    throw new RangeError(`ntor: ID must be ${NTOR_ID_MIN_LENGTH}..${NTOR_ID_MAX_LENGTH} bytes`);
  }
  if (!isKey(serverOnionPublic)) {
    throw new RangeError(`ntor: server onion public key must be ${NTOR_KEY_LENGTH} bytes`);
  }
  if (randomX !== undefined && !isKey(randomX)) {
    throw new RangeError(`ntor: randomX must be ${NTOR_KEY_LENGTH} bytes`);
  }
  const x = Buffer.alloc(NTOR_KEY_LENGTH);
  if (randomX !== undefined) randomX.copy(x);
  else sodium.randombytes_buf(x);
  const X = Buffer.alloc(NTOR_KEY_LENGTH);
  sodium.crypto_scalarmult_base(X, x);

  const state = Object.freeze({}) as NtorClientState;
  liveClientStates += 1;
  clientStates.set(state, {
    id: Buffer.from(id),
    B: Buffer.from(serverOnionPublic),
    x,
    X,
  });
  return { state, message: Buffer.from(X) };
}

/**
 * Server side: answer the client message `clientX` (X, 32 bytes) with this
 * node's identity `id`, onion key pair (`onionSecret` b, `onionPublic` B),
 * producing `keyBytes` (1..8160) bytes of key material. `randomY` (32 bytes)
 * replaces the random ephemeral secret, for known-answer tests only.
 * Returns null, never throws, on any bad input: wrong lengths, or an X that
 * makes a DH output all zero.
 */
export function ntorServerRespond(
  id: Buffer,
  onionSecret: Buffer,
  onionPublic: Buffer,
  clientX: Buffer,
  keyBytes: number,
  randomY?: Buffer,
): { message: Buffer; keys: Buffer } | null {
  if (
    !isId(id) ||
    !isKey(onionSecret) ||
    !isKey(onionPublic) ||
    !isKey(clientX) ||
    !isKeyBytes(keyBytes) ||
    (randomY !== undefined && !isKey(randomY))
  ) {
    return null;
  }
  const y = Buffer.alloc(NTOR_KEY_LENGTH);
  const xy = Buffer.alloc(NTOR_KEY_LENGTH);
  const xb = Buffer.alloc(NTOR_KEY_LENGTH);
  try {
    if (randomY !== undefined) randomY.copy(y);
    else sodium.randombytes_buf(y);
    const Y = Buffer.alloc(NTOR_KEY_LENGTH);
    sodium.crypto_scalarmult_base(Y, y);

    // Compute both before judging either, as Tor does.
    const okXY = diffieHellman(xy, y, clientX);
    const okXB = diffieHellman(xb, onionSecret, clientX);
    if (!(okXY && okXB)) return null;

    const { secretInput, auth } = derive(xy, xb, id, onionPublic, clientX, Y);
    try {
      const keys = hkdfSha256(secretInput, T_KEY, M_EXPAND, keyBytes);
      return { message: Buffer.concat([Y, auth]), keys };
    } finally {
      sodium.sodium_memzero(secretInput);
    }
  } finally {
    sodium.sodium_memzero(y);
    sodium.sodium_memzero(xy);
    sodium.sodium_memzero(xb);
  }
}

/**
 * Client side: check the server's reply (Y | AUTH, 64 bytes) and return
 * `keyBytes` (1..8160) bytes of key material, equal to the server's. Returns
 * null, never throws, if AUTH does not verify (wrong server, wrong ID or B,
 * tampered reply), a DH output is all zero, a length is wrong, or the state
 * was already used. The state is consumed in every case.
 */
export function ntorClientFinish(
  state: NtorClientState,
  serverMessage: Buffer,
  keyBytes: number,
): Buffer | null {
  const s = clientStates.get(state);
  if (s === undefined) return null;
  clientStates.delete(state);
  liveClientStates -= 1;

  const xy = Buffer.alloc(NTOR_KEY_LENGTH);
  const xb = Buffer.alloc(NTOR_KEY_LENGTH);
  try {
    if (
      !Buffer.isBuffer(serverMessage) ||
      serverMessage.length !== NTOR_SERVER_MESSAGE_LENGTH ||
      !isKeyBytes(keyBytes)
    ) {
      return null;
    }
    const Y = serverMessage.subarray(0, NTOR_KEY_LENGTH);
    const serverAuth = serverMessage.subarray(NTOR_KEY_LENGTH);

    const okXY = diffieHellman(xy, s.x, Y);
    const okXB = diffieHellman(xb, s.x, s.B);
    const { secretInput, auth } = derive(xy, xb, s.id, s.B, s.X, Y);
    try {
      const authOk = timingSafeEqual(auth, serverAuth);
      if (!(authOk && okXY && okXB)) return null;
      return hkdfSha256(secretInput, T_KEY, M_EXPAND, keyBytes);
    } finally {
      sodium.sodium_memzero(secretInput);
    }
  } finally {
    sodium.sodium_memzero(s.x);
    sodium.sodium_memzero(xy);
    sodium.sodium_memzero(xb);
  }
}

/**
 * Abandon a client handshake that will not be finished (timeout, circuit
 * torn down): wipes x and consumes the state. Harmless on a used state.
 */
export function ntorClientDiscard(state: NtorClientState): void {
  const s = clientStates.get(state);
  if (s === undefined) return;
  clientStates.delete(state);
  liveClientStates -= 1;
  sodium.sodium_memzero(s.x);
}

/**
 * out = EXP(pub, secret). False if the output is all zero (pub of small
 * order); libsodium refuses those itself, and sodium-native turns that into
 * an exception, so both paths end here.
 */
function diffieHellman(out: Buffer, secret: Buffer, pub: Buffer): boolean {
  try {
    sodium.crypto_scalarmult(out, secret, pub);
  } catch {
    sodium.sodium_memzero(out);
    return false;
  }
  let acc = 0;
  for (let i = 0; i < out.length; i++) acc |= out[i] ?? 0;
  return acc !== 0;
}

/** secret_input and AUTH from the two DH outputs and the public values. */
function derive(
  xy: Buffer,
  xb: Buffer,
  id: Buffer,
  B: Buffer,
  X: Buffer,
  Y: Buffer,
): { secretInput: Buffer; auth: Buffer } {
  // Buffer.alloc, not Buffer.concat: concat may place secrets in the shared pool.
  const secretInput = join([xy, xb, id, B, X, Y, PROTOID]);
  const verify = hmac(T_VERIFY, secretInput);
  const authInput = join([verify, id, B, Y, X, PROTOID, SERVER]);
  const auth = hmac(T_MAC, authInput);
  sodium.sodium_memzero(verify);
  sodium.sodium_memzero(authInput);
  return { secretInput, auth };
}

function hmac(key: Buffer, message: Buffer): Buffer {
  return createHmac('sha256', key).update(message).digest();
}

function join(parts: Buffer[]): Buffer {
  let total = 0;
  for (const p of parts) total += p.length;
  const out = Buffer.alloc(total);
  let off = 0;
  for (const p of parts) off += p.copy(out, off);
  return out;
}

function isKey(b: unknown): b is Buffer {
  return Buffer.isBuffer(b) && b.length === NTOR_KEY_LENGTH;
}

function isId(b: unknown): b is Buffer {
  return Buffer.isBuffer(b) && b.length >= NTOR_ID_MIN_LENGTH && b.length <= NTOR_ID_MAX_LENGTH;
}

function isKeyBytes(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= NTOR_MAX_KEY_BYTES;
}
