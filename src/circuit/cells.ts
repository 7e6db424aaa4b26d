/**
 * Circuit message codecs (docs/protocol.md, "Circuit messages" and
 * "Relay messages").
 *
 * Between neighbours, inside one link message (after its type byte):
 *   CREATE    circ_id u32 | B [32] | X [32]
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
}

export function decodeCreate(buf: Buffer, o: number, len: number): CreateMsg | null {
  if (len !== 68 || o + len > buf.length) return null;
  return {
    circId: buf.readUInt32BE(o),
    onionKey: Buffer.from(buf.subarray(o + 4, o + 36)),
    x: Buffer.from(buf.subarray(o + 36, o + 68)),
  };
}

export function encodeCreate(type: number, circId: number, a: Buffer, b: Buffer): Buffer {
  const out = Buffer.alloc(1 + 4 + 64);
  out[0] = type;
  out.writeUInt32BE(circId, 1);
  a.copy(out, 5, 0, 32);
  b.copy(out, 37, 0, 32);
  return out;
}

/** CREATED has the same shape as CREATE: circ_id, then two 32-byte fields. */
export const decodeCreated = (buf: Buffer, o: number, len: number) => {
  const m = decodeCreate(buf, o, len);
  return m ? { circId: m.circId, y: m.onionKey, auth: m.x } : null;
};

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
} as const;

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
