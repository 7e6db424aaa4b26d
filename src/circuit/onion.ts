/**
 * Onion layers of circuit cells (docs/protocol.md, "Onion layers").
 *
 * Forward (client to exit): every hop authenticates and decrypts its own
 * layer and keeps the cell size constant by appending 48 bytes of its own
 * keystream, which the client computed in advance (the filler technique
 * of the Sphinx packet format). A relay that changes a cell it forwards
 * is caught by the next hop's tag, so a guard cannot tag a cell for a
 * colluding exit to see.
 *
 *   hop cell (S bytes):  nonce N [24] | tag T [16] | C [S-40]
 *   polykey = XChaCha20(Kf, N) block 0, first 32 bytes
 *   T = Poly1305(polykey, C)
 *   (C || 0^48) XOR XChaCha20(Kf, N, from block 1) = seq [8] | next cell [S]
 *
 * Backward (toward the client): the hop that originates a cell (always
 * the last hop of the circuit) seals it; every hop on the way adds a
 * length-preserving layer and re-keys the cell's nonce with a keyed
 * permutation (AES-128 on one block), so that no byte pattern is common to
 * two links. The client removes the layers and checks the origin's tag and
 * sequence number.
 *
 *   cell (S bytes): X [16] | B [S-16]
 *   origin:     X random; nonce = X || 0^8; B = T [16] | C [S-32],
 *               C = (seq [8] | body) XOR XChaCha20(Kb, nonce, from block 1),
 *               T = Poly1305(XChaCha20(Kb, nonce) block 0, C)
 *   forwarder:  X' = AES-128(Kx, X); B' = B XOR XChaCha20(Kb, X' || 0^8)
 *
 * Each function here is pure: bytes in, bytes out, no I/O and no clock.
 */
import { createCipheriv, createDecipheriv, type Cipher, type Decipher } from 'node:crypto';
import sodium from 'sodium-native';

export const NONCE_BYTES = 24;
export const TAG_BYTES = 16;
export const SEQ_BYTES = 8;
/** What one forward layer costs: nonce, tag, sequence number. */
export const FORWARD_HOP_OVERHEAD = NONCE_BYTES + TAG_BYTES + SEQ_BYTES;
export const BACKWARD_X_BYTES = 16;
/** X, tag and sequence number of a backward cell. */
export const BACKWARD_OVERHEAD = BACKWARD_X_BYTES + TAG_BYTES + SEQ_BYTES;
/** Key material per hop from the handshake: Kf, Kb, Kx. */
export const HOP_KEY_BYTES = 32 + 32 + 16;

/** Forward payload capacity of a cell of `size` bytes through `hops` hops. */
export function forwardCapacity(size: number, hops: number): number {
  return size - FORWARD_HOP_OVERHEAD * hops;
}

export function backwardCapacity(size: number): number {
  return size - BACKWARD_OVERHEAD;
}

/** The keys one hop shares with the client. */
export class HopKeys {
  readonly forward: Buffer;
  readonly backward: Buffer;
  private readonly prpEnc: Cipher;
  private readonly prpDec: Decipher;

  constructor(material: Buffer) {
    if (material.length < HOP_KEY_BYTES) throw new RangeError('hop key material too short');
    // Plain buffers, not sodium_malloc: guarded pages cost several memory
    // mappings each, and a relay holds thousands of circuits.
    this.forward = Buffer.alloc(32);
    this.backward = Buffer.alloc(32);
    material.copy(this.forward, 0, 0, 32);
    material.copy(this.backward, 0, 32, 64);
    const kx = material.subarray(64, 80);
    // ECB on exactly one block per call is a keyed permutation of that
    // block: no chaining state carries from one cell to the next.
    this.prpEnc = createCipheriv('aes-128-ecb', kx, null).setAutoPadding(false);
    this.prpDec = createDecipheriv('aes-128-ecb', kx, null).setAutoPadding(false);
  }

  permute(x: Buffer, out: Buffer): void {
    this.prpEnc.update(x).copy(out);
  }

  unpermute(x: Buffer, out: Buffer): void {
    this.prpDec.update(x).copy(out);
  }

  wipe(): void {
    this.forward.fill(0);
    this.backward.fill(0);
  }
}

const polyKey = Buffer.alloc(32);
const nonce24 = Buffer.alloc(24);

/**
 * The 8-byte sequence field: byte 0 holds flags, bytes 1-7 the number
 * (sequence numbers stay below 2^53, so byte 0 of the number is always 0).
 */
export const SEQ_FLAG_FOR_THIS_HOP = 0x01;

function readSeq(buf: Buffer, o: number): number {
  return (buf.readUInt32BE(o) & 0x00ff_ffff) * 0x1_0000_0000 + buf.readUInt32BE(o + 4);
}

function writeSeq(buf: Buffer, o: number, seq: number): void {
  buf.writeUInt32BE(Math.floor(seq / 0x1_0000_0000), o);
  buf.writeUInt32BE(seq >>> 0, o + 4);
}

/** `len` bytes of the XChaCha20 stream (key, nonce) that start at byte `offset` of block 1. */
/** Valid until the next call (a shared buffer). */
function keystream(key: Buffer, nonce: Buffer, offset: number, len: number): Buffer {
  const block = Math.floor(offset / 64);
  const skip = offset - block * 64;
  const tmp = ksTmp.subarray(0, skip + len);
  tmp.fill(0);
  sodium.crypto_stream_xchacha20_xor_ic(tmp, tmp, nonce, 1 + block, key);
  return tmp.subarray(skip);
}

// --- forward ----------------------------------------------------------------

/**
 * Relay side: authenticate and remove one forward layer from the cell at
 * `cell[off, off+size)`. On success returns the hop's sequence number (> 0)
 * and leaves the next hop's cell (or, at the last hop, the plaintext) in
 * `scratch[8, 8+size)`; `scratch` needs size + 8 bytes. `scratch[0]` holds
 * the flags (SEQ_FLAG_FOR_THIS_HOP: the cell is addressed to this hop).
 * Returns 0 if the tag does not verify (the cell is then dropped and
 * counted by the caller).
 */
export function peelForward(
  keys: HopKeys,
  cell: Buffer,
  off: number,
  size: number,
  scratch: Buffer,
): number {
  if (size < FORWARD_HOP_OVERHEAD + 8 || off < 0 || off + size > cell.length) return 0;
  if (scratch.length < size + 8) return 0;
  const n = cell.subarray(off, off + NONCE_BYTES);
  const tag = cell.subarray(off + NONCE_BYTES, off + NONCE_BYTES + TAG_BYTES);
  const c = cell.subarray(off + NONCE_BYTES + TAG_BYTES, off + size);
  sodium.crypto_stream_xchacha20(polyKey, n, keys.forward);
  if (!sodium.crypto_onetimeauth_verify(tag, c, polyKey)) return 0;
  const d = scratch.subarray(0, size + 8);
  c.copy(d, 0);
  d.fill(0, c.length);
  sodium.crypto_stream_xchacha20_xor_ic(d, d, n, 1, keys.forward);
  const seq = readSeq(d, 0);
  return seq > 0 ? seq : 0;
}

/**
 * Client side: wrap `payload` for a circuit of hops.length hops (index 0
 * is the guard, the last one the hop that will read it) into one forward
 * cell of `size` bytes written to `out[0, size)`. `seqs[i]` is the
 * sequence number for hop i (each hop's own counter). The payload must fit
 * forwardCapacity(size, hops.length); the rest of the last hop's
 * plaintext is filled from `padding`.
 */
export function wrapForward(
  hops: HopKeys[],
  seqs: number[],
  payload: Buffer,
  size: number,
  out: Buffer,
  padding: PaddingSource,
  random: (buf: Buffer) => void = sodium.randombytes_buf,
): void {
  const n = hops.length;
  if (n < 1 || n > MAX_WRAP_HOPS) throw new RangeError('a circuit has 1 to 8 hops');
  if (size > MAX_CELL_BYTES) throw new RangeError('cell too large');
  if (payload.length > forwardCapacity(size, n)) throw new RangeError('payload too large for cell');
  // Work buffers are module-level and reused: no allocation per cell on
  // the client's hot path (the process is single-threaded).
  const nonces = wrapNonces;
  for (let i = 0; i < n; i += 1) random(nonces[i]!);
  // Filler: what hops 1..n-1 append, as the last hop will see it.
  let phi = phiA;
  let phiLen = 0;
  for (let h = 1; h < n; h += 1) {
    const seg = keystream(hops[h - 1]!.forward, nonces[h - 1]!, 8 + size - 48 * h, 48 * h);
    const next = phi === phiA ? phiB : phiA;
    for (let j = 0; j < phiLen; j += 1) next[j] = phi[j]! ^ seg[j]!;
    seg.copy(next, phiLen, phiLen);
    phi = next;
    phiLen = 48 * h;
  }
  const cLen = size - NONCE_BYTES - TAG_BYTES;
  // The last hop's layer: seq, payload, padding; its tail forced to the filler.
  let cell = cellA;
  const m = wrapM.subarray(0, cLen);
  writeSeq(m, 0, seqs[n - 1]!);
  // The last hop is told the cell is for it, even if it has a next hop:
  // an EXTEND resent after a lost EXTENDED must not be forwarded.
  m[0] = SEQ_FLAG_FOR_THIS_HOP;
  payload.copy(m, SEQ_BYTES);
  padding.fill(m.subarray(SEQ_BYTES + payload.length));
  sealForwardLayer(hops[n - 1]!, nonces[n - 1]!, m, cell, size, phi.subarray(0, phiLen));
  // Outer layers, innermost first.
  for (let i = n - 2; i >= 0; i -= 1) {
    writeSeq(m, 0, seqs[i]!);
    cell.copy(m, SEQ_BYTES, 0, size - FORWARD_HOP_OVERHEAD);
    const outer = cell === cellA ? cellB : cellA;
    sealForwardLayer(hops[i]!, nonces[i]!, m, outer, size, null);
    cell = outer;
  }
  cell.copy(out, 0, 0, size);
}

const MAX_WRAP_HOPS = 8;
const MAX_CELL_BYTES = 2048;
const wrapNonces = Array.from({ length: MAX_WRAP_HOPS }, () => Buffer.alloc(NONCE_BYTES));
const phiA = Buffer.alloc(48 * MAX_WRAP_HOPS);
const phiB = Buffer.alloc(48 * MAX_WRAP_HOPS);
const cellA = Buffer.alloc(MAX_CELL_BYTES);
const cellB = Buffer.alloc(MAX_CELL_BYTES);
const wrapM = Buffer.alloc(MAX_CELL_BYTES);
const ksTmp = Buffer.alloc(64 + 48 * MAX_WRAP_HOPS);

function sealForwardLayer(
  keys: HopKeys,
  nonce: Buffer,
  m: Buffer,
  cell: Buffer,
  size: number,
  tail: Buffer | null,
): void {
  nonce.copy(cell, 0);
  const c = cell.subarray(NONCE_BYTES + TAG_BYTES, size);
  sodium.crypto_stream_xchacha20_xor_ic(c, m, nonce, 1, keys.forward);
  if (tail && tail.length > 0) tail.copy(c, c.length - tail.length);
  sodium.crypto_stream_xchacha20(polyKey, nonce, keys.forward);
  sodium.crypto_onetimeauth(cell.subarray(NONCE_BYTES, NONCE_BYTES + TAG_BYTES), c, polyKey);
}

// --- backward ---------------------------------------------------------------

/**
 * Originating hop: seal `body` (at most backwardCapacity(size) bytes,
 * zero-padded) with sequence number `seq` into a backward cell of `size`
 * bytes at `out[0, size)`.
 */
export function sealBackward(
  keys: HopKeys,
  seq: number,
  body: Buffer,
  size: number,
  out: Buffer,
  random: (buf: Buffer) => void = sodium.randombytes_buf,
): void {
  if (body.length > backwardCapacity(size)) throw new RangeError('body too large for cell');
  const x = out.subarray(0, BACKWARD_X_BYTES);
  random(x);
  x.copy(nonce24, 0);
  nonce24.fill(0, BACKWARD_X_BYTES);
  const c = out.subarray(BACKWARD_X_BYTES + TAG_BYTES, size);
  writeSeq(c, 0, seq);
  body.copy(c, SEQ_BYTES);
  c.fill(0, SEQ_BYTES + body.length);
  sodium.crypto_stream_xchacha20_xor_ic(c, c, nonce24, 1, keys.backward);
  sodium.crypto_stream_xchacha20(polyKey, nonce24, keys.backward);
  sodium.crypto_onetimeauth(
    out.subarray(BACKWARD_X_BYTES, BACKWARD_X_BYTES + TAG_BYTES),
    c,
    polyKey,
  );
}

const xTmp = Buffer.alloc(BACKWARD_X_BYTES);

/** Forwarding hop: add this hop's layer to the backward cell in place. */
export function layerBackward(keys: HopKeys, cell: Buffer, off: number, size: number): boolean {
  if (size < BACKWARD_OVERHEAD || off < 0 || off + size > cell.length) return false;
  const x = cell.subarray(off, off + BACKWARD_X_BYTES);
  keys.permute(x, xTmp);
  xTmp.copy(x);
  xTmp.copy(nonce24, 0);
  nonce24.fill(0, BACKWARD_X_BYTES);
  const b = cell.subarray(off + BACKWARD_X_BYTES, off + size);
  sodium.crypto_stream_xchacha20_xor_ic(b, b, nonce24, 0, keys.backward);
  return true;
}

/**
 * Client side: remove the layers of hops[0..origin) from a backward cell
 * (in place), then authenticate and open the origin hop's seal. Returns the
 * origin's sequence number (> 0) with the body at `cell[off+40, off+size)`,
 * or 0 if the tag does not verify.
 */
export function unwrapBackward(
  hops: HopKeys[],
  origin: number,
  cell: Buffer,
  off: number,
  size: number,
): number {
  if (origin < 0 || origin >= hops.length) return 0;
  if (size < BACKWARD_OVERHEAD || off < 0 || off + size > cell.length) return 0;
  const x = cell.subarray(off, off + BACKWARD_X_BYTES);
  const b = cell.subarray(off + BACKWARD_X_BYTES, off + size);
  for (let i = 0; i < origin; i += 1) {
    x.copy(nonce24, 0);
    nonce24.fill(0, BACKWARD_X_BYTES);
    sodium.crypto_stream_xchacha20_xor_ic(b, b, nonce24, 0, hops[i]!.backward);
    hops[i]!.unpermute(x, xTmp);
    xTmp.copy(x);
  }
  const keys = hops[origin]!;
  x.copy(nonce24, 0);
  nonce24.fill(0, BACKWARD_X_BYTES);
  const tag = cell.subarray(off + BACKWARD_X_BYTES, off + BACKWARD_X_BYTES + TAG_BYTES);
  const c = cell.subarray(off + BACKWARD_X_BYTES + TAG_BYTES, off + size);
  sodium.crypto_stream_xchacha20(polyKey, nonce24, keys.backward);
  if (!sodium.crypto_onetimeauth_verify(tag, c, polyKey)) return 0;
  sodium.crypto_stream_xchacha20_xor_ic(c, c, nonce24, 1, keys.backward);
  const seq = readSeq(c, 0);
  return seq > 0 ? seq : 0;
}

/**
 * Padding for the unused end of a forward payload: pseudo-random bytes
 * (a ChaCha stream under a random key), so that the last hop cannot tell
 * padding from the filler the other hops appended and so cannot count
 * them. Cheap: one stream call per cell, no system call.
 */
export class PaddingSource {
  private readonly key = Buffer.alloc(32);
  private readonly nonce = Buffer.alloc(24);
  private counter = 0;

  /** `key` only for test vectors; by default a random one. */
  constructor(key?: Buffer) {
    if (key) key.copy(this.key);
    else sodium.randombytes_buf(this.key);
  }

  fill(buf: Buffer): void {
    if (buf.length === 0) return;
    this.counter += 1;
    writeSeq(this.nonce, 0, this.counter);
    buf.fill(0);
    sodium.crypto_stream_xchacha20_xor_ic(buf, buf, this.nonce, 0, this.key);
  }
}
