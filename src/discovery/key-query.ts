/**
 * The key query: DHT peers are bare ip:port hints, but a descriptor is
 * stored under its relay's public key. A client asks an announced address
 * "which key are you?" with one datagram on the relay's link port; the
 * relay answers statelessly with its Ed25519 public key. The answer is not
 * trusted: the client then fetches the descriptor stored under that key
 * and accepts it only if it is validly signed by that key and lists the
 * very address that was announced.
 *
 *   query  (64 bytes): "SHLQ" | version u8 = 1 | 59 zero bytes
 *   answer (37 bytes): "SHLK" | version u8 = 1 | public key [32]
 *
 * The query is longer than the answer, so the exchange cannot amplify a
 * spoofed flood. Neither starts with a DTLS content type (20-23).
 */
export const KEY_QUERY_BYTES = 64;
export const KEY_ANSWER_BYTES = 37;
const QUERY_MAGIC = 0x53484c51; // "SHLQ"
const ANSWER_MAGIC = 0x53484c4b; // "SHLK"

export function encodeKeyQuery(): Buffer {
  const q = Buffer.alloc(KEY_QUERY_BYTES);
  q.writeUInt32BE(QUERY_MAGIC, 0);
  q[4] = 1;
  return q;
}

export function isKeyQuery(d: Buffer): boolean {
  return d.length === KEY_QUERY_BYTES && d.readUInt32BE(0) === QUERY_MAGIC && d[4] === 1;
}

export function encodeKeyAnswer(publicKey: Buffer): Buffer {
  const a = Buffer.alloc(KEY_ANSWER_BYTES);
  a.writeUInt32BE(ANSWER_MAGIC, 0);
  a[4] = 1;
  publicKey.copy(a, 5, 0, 32);
  return a;
}

/** The public key in an answer, or null if it is not one. */
export function decodeKeyAnswer(d: Buffer): Buffer | null {
  if (d.length !== KEY_ANSWER_BYTES || d.readUInt32BE(0) !== ANSWER_MAGIC || d[4] !== 1)
    return null;
  return Buffer.from(d.subarray(5, 37));
}
