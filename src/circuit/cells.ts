/**
 * Circuit message codecs (docs/protocol.md, "Circuit messages" and
 * "Relay messages").
 *
 * Between neighbours, inside one link message (after its type byte):
 *   CREATE    circ_id u32 | B [32] | X [32] | depth u8
 *   CREATED   circ_id u32 | Y [32] | AUTH [32]
 *   DESTROY   circ_id u32 | reason u8
 *   FORWARD   circ_id u32 | cell [S]      S in CELL_SIZES
 *   BACKWARD  circ_id u32 | cell [S]
 *
 * Inside a cell, what the last hop reads and the origin writes:
 *   command u8 | length u16 | body [length] | padding
 *
 * Decoders check sizes first and return null on malformed input.
 */
import { LINK_MESSAGE_BYTES } from '../link/constants.js';
import { MSG_CREATE, MSG_CREATED } from '../link/messages.js';
import { backwardCapacity, forwardCapacity, MAX_HOPS } from './onion.js';

/** Cell sizes: a small one for acknowledgements and control, a full one. */
export const CELL_SMALL = 400;
/** Link message minus type byte and circuit id. */
export const CELL_LARGE = LINK_MESSAGE_BYTES - 1 - 4;
export const CELL_SIZES = [CELL_SMALL, CELL_LARGE] as const;
/** Circuits are built for at most this many hops; the MTU and the backward tail assume it. */
export { MAX_HOPS };
export const RELAY_HEADER_BYTES = 3;
/** Largest IP packet a circuit carries (both directions). */
export const CIRCUIT_MTU = forwardCapacity(CELL_LARGE, MAX_HOPS) - RELAY_HEADER_BYTES;

export function isCellSize(n: number): boolean {
  return n === CELL_SMALL || n === CELL_LARGE;
}

/** Smallest cell whose forward capacity through `hops` hops fits `bytes` of relay message. */
export function forwardCellSize(bytes: number, hops: number): number {
  return bytes <= forwardCapacity(CELL_SMALL, hops) ? CELL_SMALL : CELL_LARGE;
}

export function backwardCellSize(bytes: number): number {
  return bytes <= backwardCapacity(CELL_SMALL) ? CELL_SMALL : CELL_LARGE;
}

// --- between neighbours -------------------------------------------------------

export interface CreateMsg {
  circId: number;
  onionKey: Buffer;
  x: Buffer;
  /**
   * The position the sender gives the new hop, 1..MAX_HOPS (docs/protocol.md
   * section 7.4): a relay that extends sends its own depth + 1, and refuses
   * to extend from depth MAX_HOPS. The decoder returns the byte as it came;
   * the relay judges it.
   */
  depth: number;
}

export const CREATE_BODY_BYTES = 4 + 32 + 32 + 1;
export const CREATED_BODY_BYTES = 4 + 32 + 32;

export function decodeCreate(buf: Buffer, o: number, len: number): CreateMsg | null {
  if (len !== CREATE_BODY_BYTES || o < 0 || o + len > buf.length) return null;
  return {
    circId: buf.readUInt32BE(o),
    onionKey: Buffer.from(buf.subarray(o + 4, o + 36)),
    x: Buffer.from(buf.subarray(o + 36, o + 68)),
    depth: buf[o + 68] as number,
  };
}

/** The CREATE link message (type byte included). */
export function encodeCreate(circId: number, onionKey: Buffer, x: Buffer, depth: number): Buffer {
  const out = Buffer.alloc(1 + CREATE_BODY_BYTES);
  out[0] = MSG_CREATE;
  out.writeUInt32BE(circId, 1);
  onionKey.copy(out, 5, 0, 32);
  x.copy(out, 37, 0, 32);
  out[69] = depth;
  return out;
}

/** The CREATED link message (type byte included). */
export function encodeCreated(circId: number, y: Buffer, auth: Buffer): Buffer {
  const out = Buffer.alloc(1 + CREATED_BODY_BYTES);
  out[0] = MSG_CREATED;
  out.writeUInt32BE(circId, 1);
  y.copy(out, 5, 0, 32);
  auth.copy(out, 37, 0, 32);
  return out;
}

export function decodeCreated(
  buf: Buffer,
  o: number,
  len: number,
): { circId: number; y: Buffer; auth: Buffer } | null {
  if (len !== CREATED_BODY_BYTES || o < 0 || o + len > buf.length) return null;
  return {
    circId: buf.readUInt32BE(o),
    y: Buffer.from(buf.subarray(o + 4, o + 36)),
    auth: Buffer.from(buf.subarray(o + 36, o + 68)),
  };
}

export function encodeDestroy(type: number, circId: number, reason: number): Buffer {
  const out = Buffer.alloc(6);
  out[0] = type;
  out.writeUInt32BE(circId, 1);
  out[5] = reason;
  return out;
}

export function decodeDestroy(
  buf: Buffer,
  o: number,
  len: number,
): { circId: number; reason: number } | null {
  if (len !== 5 || o + len > buf.length) return null;
  return { circId: buf.readUInt32BE(o), reason: buf[o + 4] as number };
}

export const DestroyReason = {
  none: 0,
  protocol: 1,
  resourceLimit: 2,
  linkLost: 3,
  finished: 4,
  timeout: 5,
  badKey: 6,
  /** EXTEND from a hop at depth MAX_HOPS: the circuit would be too long (section 7.4). */
  tooManyHops: 7,
  /** EXTEND to an address the relay does not extend to (loopback, private, ...). */
  forbiddenAddress: 8,
} as const;

const DESTROY_REASON_TEXT: Record<number, string> = {
  0: 'no reason given',
  1: 'protocol violation',
  2: 'resource limit at the relay',
  3: 'link lost',
  4: 'finished',
  5: 'timed out',
  6: 'wrong onion key (stale descriptor?)',
  7: 'too many hops (the relay is at depth MAX_HOPS)',
  8: 'the relay does not extend to that address (loopback, private or its own)',
};

/** One phrase for a DESTROY or EXTEND_FAILED reason, for logs and errors. */
export function destroyReasonText(reason: number): string {
  return `${DESTROY_REASON_TEXT[reason] ?? 'unknown reason'} (reason ${reason})`;
}

// --- relay messages (inside cells) --------------------------------------------

export const Relay = {
  data: 1,
  extend: 2,
  extended: 3,
  extendFailed: 4,
  lease: 5,
  leaseGrant: 6,
  leaseRefused: 7,
  rejected: 8,
  ping: 9,
  pong: 10,
} as const;

export interface RelayMsg {
  command: number;
  bodyOffset: number;
  bodyLength: number;
}

/** Parse the relay header at `buf[o, o+cap)`; null if the length overruns. */
export function decodeRelay(buf: Buffer, o: number, cap: number): RelayMsg | null {
  if (cap < RELAY_HEADER_BYTES || o + cap > buf.length) return null;
  const command = buf[o] as number;
  const bodyLength = buf.readUInt16BE(o + 1);
  if (command === 0 || RELAY_HEADER_BYTES + bodyLength > cap) return null;
  return { command, bodyOffset: o + RELAY_HEADER_BYTES, bodyLength };
}

/** Write a relay message (header + body) into `out` at 0; returns its length. */
export function encodeRelay(command: number, body: Buffer, out: Buffer): number {
  out[0] = command;
  out.writeUInt16BE(body.length, 1);
  body.copy(out, RELAY_HEADER_BYTES);
  return RELAY_HEADER_BYTES + body.length;
}

export function relayMessage(command: number, body: Buffer): Buffer {
  const out = Buffer.alloc(RELAY_HEADER_BYTES + body.length);
  encodeRelay(command, body, out);
  return out;
}

export interface ExtendBody {
  targetId: Buffer;
  host: Buffer;
  port: number;
  onionKey: Buffer;
  x: Buffer;
}

/** EXTEND: target id [32] | family u8 (4|6) | address [4|16] | port u16 | B [32] | X [32] */
export function encodeExtend(e: ExtendBody): Buffer {
  const fam = e.host.length === 4 ? 4 : 6;
  return Buffer.concat([
    e.targetId,
    Buffer.from([fam]),
    e.host,
    Buffer.from([e.port >> 8, e.port & 0xff]),
    e.onionKey,
    e.x,
  ]);
}

export function decodeExtend(buf: Buffer, o: number, len: number): ExtendBody | null {
  if (len < 33 || o + len > buf.length) return null;
  const fam = buf[o + 32];
  const alen = fam === 4 ? 4 : fam === 6 ? 16 : 0;
  if (alen === 0 || len !== 32 + 1 + alen + 2 + 64) return null;
  let p = o + 33;
  const host = Buffer.from(buf.subarray(p, p + alen));
  p += alen;
  const port = buf.readUInt16BE(p);
  p += 2;
  if (port === 0) return null;
  return {
    targetId: Buffer.from(buf.subarray(o, o + 32)),
    host,
    port,
    onionKey: Buffer.from(buf.subarray(p, p + 32)),
    x: Buffer.from(buf.subarray(p + 32, p + 64)),
  };
}

/** LEASE: session [16] | flags u8 (bit 0: wants IPv6) */
export const LEASE_BODY_BYTES = 17;
/** LEASE_GRANT: session [16] | IPv4 [4] | IPv6 [16] (all zero if none) */
export const LEASE_GRANT_BYTES = 36;
