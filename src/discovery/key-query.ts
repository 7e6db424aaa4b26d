/**
 * The key query: DHT peers are bare ip:port hints, but a descriptor is
 * stored under its relay's public key. A client asks an announced address
 * "which key are you?" with one datagram on the relay's link port, carrying
 * a fresh random nonce; the relay answers statelessly with its Ed25519
 * public key and its signature over the nonce.
 *
 *   query  (128 bytes): "SHLQ" | version u8 = 2 | nonce [32] | 91 zero bytes
 *   answer (101 bytes): "SHLK" | version u8 = 2 | public key [32] | signature [64]
 *   signed message:     "shallot key answer v2" | nonce [32] | public key [32]
 *
 * The nonce goes only to the announced address, so a valid answer comes
 * from the holder of that key, on the path to that address: an off-path
 * racer who spoofs the address cannot make one, and a forged answer is
 * dropped without ending the wait for the real one. The client still
 * fetches the descriptor under that key and accepts it only if it is
 * signed by that key and lists the very address that was announced.
 *
 * The query is longer than the answer, so the exchange cannot amplify a
 * spoofed flood, and the signing is budgeted (KEY_ANSWERS_PER_S), so a
 * flood of queries costs a relay a bounded share of a core. Neither
 * datagram starts with a DTLS content type (20-23).
 */
import { signDetached, verifyDetached } from '../identity.js';

export const KEY_QUERY_BYTES = 128;
export const KEY_ANSWER_BYTES = 101;
export const KEY_QUERY_NONCE_BYTES = 32;
export const KEY_QUERY_VERSION = 2;
/** Answers (signatures) a relay makes per second at most, with this burst. */
export const KEY_ANSWERS_PER_S = 200;
export const KEY_ANSWER_BURST = 200;
const QUERY_MAGIC = 0x53484c51; // "SHLQ"
const ANSWER_MAGIC = 0x53484c4b; // "SHLK"
const SIGNED_CONTEXT = Buffer.from('shallot key answer v2', 'latin1');

export function encodeKeyQuery(nonce: Buffer): Buffer {
  const q = Buffer.alloc(KEY_QUERY_BYTES);
  q.writeUInt32BE(QUERY_MAGIC, 0);
  q[4] = KEY_QUERY_VERSION;
  nonce.copy(q, 5, 0, KEY_QUERY_NONCE_BYTES);
  return q;
}

/** Cheap first test, for the link socket's demultiplexer. */
export function isKeyQuery(d: Buffer): boolean {
  return (
    d.length === KEY_QUERY_BYTES && d.readUInt32BE(0) === QUERY_MAGIC && d[4] === KEY_QUERY_VERSION
  );
}

/** The nonce of a query, or null if it is not one (the padding must be zero). */
export function decodeKeyQuery(d: Buffer): Buffer | null {
  if (!isKeyQuery(d)) return null;
  for (let i = 5 + KEY_QUERY_NONCE_BYTES; i < KEY_QUERY_BYTES; i += 1) if (d[i] !== 0) return null;
  return Buffer.from(d.subarray(5, 5 + KEY_QUERY_NONCE_BYTES));
}

function signedMessage(nonce: Buffer, publicKey: Buffer): Buffer {
  return Buffer.concat([SIGNED_CONTEXT, nonce, publicKey]);
}

export function encodeKeyAnswer(publicKey: Buffer, secretKey: Buffer, nonce: Buffer): Buffer {
  const a = Buffer.alloc(KEY_ANSWER_BYTES);
  a.writeUInt32BE(ANSWER_MAGIC, 0);
  a[4] = KEY_QUERY_VERSION;
  publicKey.copy(a, 5, 0, 32);
  signDetached(secretKey, signedMessage(nonce, publicKey)).copy(a, 37);
  return a;
}

/** The key and signature of an answer, or null if it is not one. Checks nothing cryptographic. */
export function decodeKeyAnswer(d: Buffer): { publicKey: Buffer; signature: Buffer } | null {
  if (
    d.length !== KEY_ANSWER_BYTES ||
    d.readUInt32BE(0) !== ANSWER_MAGIC ||
    d[4] !== KEY_QUERY_VERSION
  )
    return null;
  return {
    publicKey: Buffer.from(d.subarray(5, 37)),
    signature: Buffer.from(d.subarray(37, 101)),
  };
}

/** The public key of an answer to the query with `nonce`, or null if it is not a valid one. */
export function verifyKeyAnswer(d: Buffer, nonce: Buffer): Buffer | null {
  const a = decodeKeyAnswer(d);
  if (!a) return null;
  return verifyDetached(a.publicKey, signedMessage(nonce, a.publicKey), a.signature)
    ? a.publicKey
    : null;
}

/**
 * A relay's side: answers queries within a signing budget (a token bucket,
 * one shared for all senders: no per-address table to grow).
 */
export class KeyQueryResponder {
  private tokens = KEY_ANSWER_BURST;
  private refilledAt = 0;
  overBudget = 0;

  constructor(
    private readonly publicKey: Buffer,
    private readonly secretKey: Buffer,
  ) {}

  /** The answer to send back, or null (not a query, or over budget). */
  respond(datagram: Buffer, now: number): Buffer | null {
    const nonce = decodeKeyQuery(datagram);
    if (!nonce) return null;
    const elapsed = Math.max(0, now - this.refilledAt);
    this.refilledAt = now;
    this.tokens = Math.min(KEY_ANSWER_BURST, this.tokens + (elapsed * KEY_ANSWERS_PER_S) / 1000);
    if (this.tokens < 1) {
      this.overBudget += 1;
      return null;
    }
    this.tokens -= 1;
    return encodeKeyAnswer(this.publicKey, this.secretKey, nonce);
  }
}
