/**
 * Link messages: what travels inside one DTLS application record. The
 * first byte is the type; the layout of each is in docs/protocol.md
 * ("Link messages"). Decoders check sizes first and return null on any
 * malformed input; they never throw.
 */

export const MSG_AUTH = 0x01;
export const MSG_CLOSE = 0x02;
export const MSG_KEEPALIVE = 0x03;
/** One datagram of the successor session's DTLS handshake (a re-key, docs/protocol.md 4.4). */
export const MSG_REKEY = 0x04;
/** Smallest REKEY: the type byte and one DTLS record header. */
export const REKEY_MIN_BYTES = 1 + 13;
/** Application messages start here; the endpoint hands them up once a link is up. */
export const MSG_DATA = 0x10;
/** Circuit messages between neighbours (docs/protocol.md, "Circuit messages"). */
export const MSG_CREATE = 0x20;
export const MSG_CREATED = 0x21;
export const MSG_DESTROY = 0x22;
export const MSG_FORWARD = 0x23;
export const MSG_BACKWARD = 0x24;
/** DESTROY toward the client (from a circuit's next hop); MSG_DESTROY goes away from it. */
export const MSG_DESTROY_BACK = 0x25;

/**
 * The protocol version, carried in AUTH (docs/protocol.md 4.1). Version 2
 * changed the onion layers, the key schedule and the cell capacities
 * (section 8): a version 1 node cannot build or carry a version 2
 * circuit, so a link between them is refused at AUTH.
 */
export const AUTH_VERSION = 2;
export const ROLE_DIALER = 0;
export const ROLE_LISTENER = 1;

export const ED25519_PUBLIC_BYTES = 32;
export const ED25519_SIGNATURE_BYTES = 64;
/** type, version, role, key, signature, attribute length. */
export const AUTH_FIXED_BYTES = 1 + 1 + 1 + 32 + 64 + 2;
/** Attributes are small (addresses); this bounds what a peer can make us hold. */
export const AUTH_MAX_ATTRIBUTE_BYTES = 512;

/** Why a link was closed, carried in MSG_CLOSE. */
export const CloseReason = {
  normal: 0,
  unauthorized: 1,
  badAuth: 2,
  addressInUse: 3,
  badAddress: 4,
  replaced: 5,
  tooManyPeers: 6,
} as const;
export type CloseReasonCode = (typeof CloseReason)[keyof typeof CloseReason];

const CLOSE_REASON_TEXT: Record<number, string> = {
  0: 'closed by peer',
  1: 'this node is not authorised by the peer',
  2: 'authentication failed',
  3: 'inner address already in use at the peer',
  4: 'inner address not acceptable to the peer',
  5: 'replaced by a newer link',
  6: 'peer has too many links',
};

export function closeReasonText(code: number): string {
  return CLOSE_REASON_TEXT[code] ?? `closed by peer (reason ${code})`;
}

export interface AuthMessage {
  role: number;
  publicKey: Buffer;
  signature: Buffer;
  attributes: Buffer;
}

export function encodeAuth(m: AuthMessage): Buffer {
  const out = Buffer.alloc(AUTH_FIXED_BYTES + m.attributes.length);
  let o = 0;
  out[o++] = MSG_AUTH;
  out[o++] = AUTH_VERSION;
  out[o++] = m.role;
  m.publicKey.copy(out, o);
  o += 32;
  m.signature.copy(out, o);
  o += 64;
  out.writeUInt16BE(m.attributes.length, o);
  o += 2;
  m.attributes.copy(out, o);
  return out;
}

/** The version byte of what looks like an AUTH message, or null if too short to hold one. */
export function authVersionOf(buf: Buffer, offset: number, len: number): number | null {
  if (len < 2 || offset < 0 || offset + 2 > buf.length || buf[offset] !== MSG_AUTH) return null;
  return buf[offset + 1] as number;
}

/** Decode an AUTH message from `buf[offset, offset+len)`; null if malformed. */
export function decodeAuth(buf: Buffer, offset: number, len: number): AuthMessage | null {
  if (len < AUTH_FIXED_BYTES || offset < 0 || offset + len > buf.length) return null;
  if (buf[offset] !== MSG_AUTH || buf[offset + 1] !== AUTH_VERSION) return null;
  const role = buf[offset + 2] as number;
  if (role !== ROLE_DIALER && role !== ROLE_LISTENER) return null;
  const attrLen = buf.readUInt16BE(offset + 99);
  if (attrLen > AUTH_MAX_ATTRIBUTE_BYTES || AUTH_FIXED_BYTES + attrLen !== len) return null;
  return {
    role,
    publicKey: Buffer.from(buf.subarray(offset + 3, offset + 35)),
    signature: Buffer.from(buf.subarray(offset + 35, offset + 99)),
    attributes: Buffer.from(buf.subarray(offset + 101, offset + 101 + attrLen)),
  };
}

export function encodeClose(reason: CloseReasonCode): Buffer {
  return Buffer.from([MSG_CLOSE, reason]);
}

/** The reason code of a CLOSE message, or null if malformed. */
export function decodeClose(buf: Buffer, offset: number, len: number): number | null {
  if (len !== 2 || offset + len > buf.length || buf[offset] !== MSG_CLOSE) return null;
  return buf[offset + 1] as number;
}

export const KEEPALIVE = Buffer.from([MSG_KEEPALIVE]);

/**
 * The DTLS datagram a REKEY message at `buf[offset, offset+len)` carries,
 * as a view into buf, or null if malformed (too short to hold a record).
 */
export function decodeRekey(buf: Buffer, offset: number, len: number): Buffer | null {
  if (len < REKEY_MIN_BYTES || offset < 0 || offset + len > buf.length) return null;
  if (buf[offset] !== MSG_REKEY) return null;
  return buf.subarray(offset + 1, offset + len);
}
