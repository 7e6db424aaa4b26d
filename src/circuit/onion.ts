/**
 * Onion layers of circuit cells (docs/protocol.md, "Onion layers").
 *
 * Forward (client to exit): every hop authenticates and decrypts its own
 * layer and keeps the cell size constant by appending 40 bytes of its own
 * keystream, which the client computed in advance (the filler technique
 * of the Sphinx packet format). A relay that changes a cell it forwards
 * is caught by the next hop's tag, so a guard cannot tag a cell for a
 * colluding exit to see.
 *
 *   hop cell (S bytes):  nonce N [16] | tag T [16] | C [S-32]
 *   polykey = XChaCha20(Kf, N || 0^8) block 0, first 32 bytes
 *   T = Poly1305(polykey, C)
 *   (C || 0^40) XOR XChaCha20(Kf, N || 0^8, from block 1) = seq [8] | next cell [S]
 *
 * The 16-byte random N is XChaCha20's HChaCha20 input: each cell gets its
 * own subkey, and the ChaCha20 nonce after it is the constant 0^8.
 *
 * Backward (toward the client): the hop that originates a cell (always
 * the last hop of the circuit) seals it; every hop on the way adds a
 * layer whose header and keystream come from its own backward counter c,
 * which never repeats, and not from anything in the cell it received. The
 * hop carries the incoming 16-byte header inside its layer and pushes the
 * last 16 bytes of the cell out, so the cell keeps its size; the origin
 * leaves 16 * (MAX_HOPS - 1) bytes of keystream after its tagged part for
 * that. Whatever a downstream hop puts in a cell (a repeated X, equal
 * bodies, chosen differences), an honest hop one-time-pads it under a
 * keystream no cell shared before. The client inverts each header, checks
 * its 8 zero bytes, and removes the layers, then checks the origin's tag
 * and sequence number.
 *
 *   cell (S bytes): X [16] | B [S-16]
 *   origin:     X random; nonce = X || 0^8;
 *               B = T [16] | C [S-32-TAIL] | R [TAIL],   TAIL = 16 * (MAX_HOPS - 1)
 *               C || R = (seq [8] | body | 0...) XOR XChaCha20(Kb_o, nonce, from block 1),
 *               T = Poly1305(XChaCha20(Kb_o, nonce) block 0, C)
 *   forwarder:  X' = AES-128(Kx, u64(c) || 0^8);  c = 1, 2, ... per circuit
 *               B' = cell[0, S-16) XOR XChaCha20(Kb_f, X' || 0^8)   (= X || B minus its last 16)
 *
 * Each function here is pure: bytes in, bytes out, no I/O and no clock.
 */
import { createCipheriv, createDecipheriv, type Cipher, type Decipher } from 'node:crypto';
import sodium from 'sodium-native';

/** A forward layer's random nonce N; the XChaCha20 nonce is N || 0^8. */
export const NONCE_BYTES = 16;
export const TAG_BYTES = 16;
export const SEQ_BYTES = 8;
/** What one forward layer costs: nonce, tag, sequence number. */
export const FORWARD_HOP_OVERHEAD = NONCE_BYTES + TAG_BYTES + SEQ_BYTES;
export const BACKWARD_X_BYTES = 16;
/**
 * The protocol's longest path (cells.ts re-exports it): the circuit MTU
 * is computed for it, and the origin of a backward cell leaves room for
 * MAX_HOPS - 1 forwarding hops to push 16 bytes each out of the cell.
 */
export const MAX_HOPS = 3;
/** Keystream the origin leaves after its tagged part, for the forwarders to push out. */
export const BACKWARD_TAIL_BYTES = BACKWARD_X_BYTES * (MAX_HOPS - 1);
/** X, tag, sequence number and tail of a backward cell. */
export const BACKWARD_OVERHEAD = BACKWARD_X_BYTES + TAG_BYTES + SEQ_BYTES + BACKWARD_TAIL_BYTES;
/** Where the client finds the relay message in a backward cell unwrapBackward opened. */
export const BACKWARD_BODY_AT = BACKWARD_X_BYTES + TAG_BYTES + SEQ_BYTES;
/**
 * Key material M per hop from the handshake (section 7.3): 80 bytes, as in
 * version 1, now the input of the key schedule of HopKeys.
 */
export const HOP_KEY_BYTES = 80;
/** A forwarding hop's backward counter stays below this (it is exact as a number). */
export const MAX_BACKWARD_COUNTER = Number.MAX_SAFE_INTEGER;

/** Forward payload capacity of a cell of `size` bytes through `hops` hops. */
export function forwardCapacity(size: number, hops: number): number {
  return size - FORWARD_HOP_OVERHEAD * hops;
}

/** Backward relay-message capacity of a cell of `size` bytes, whatever the path length. */
export function backwardCapacity(size: number): number {
  return size - BACKWARD_OVERHEAD;
}

/** Labels of the key schedule (docs/protocol.md section 7.3), ASCII. */
const LABEL_FORWARD_ROOT = Buffer.from('shallot-v2 forward root', 'ascii');
const LABEL_BACKWARD_ROOT = Buffer.from('shallot-v2 backward root', 'ascii');
const LABEL_USE_FORWARD = Buffer.from('shallot-v2 use forward', 'ascii');
const LABEL_USE_BACKWARD = Buffer.from('shallot-v2 use backward', 'ascii');
const LABEL_USE_HEADER = Buffer.from('shallot-v2 use header', 'ascii');
/** A direction key: the root of a direction, from which its use keys derive. */
export const DIRECTION_KEY_BYTES = 32;

/**
 * What a forward layer needs: Kf. HopKeys has it; so has the key of one
 * epoch (key-epochs.ts), which changes while the circuit lives.
 */
export interface ForwardLayerKeys {
  readonly forward: Buffer;
}

/**
 * The keys one hop shares with the client, each for one use only
 * (docs/protocol.md section 7.3):
 *
 *   forward root  = BLAKE2b-256(key = "shallot-v2 forward root", M)
 *   backward root = BLAKE2b-256(key = "shallot-v2 backward root", M)
 *   Kf            = BLAKE2b-256(key = forward root, "shallot-v2 use forward")
 *   Kb_o | Kb_f   = BLAKE2b-512(key = backward root, "shallot-v2 use backward")
 *   Kx            = BLAKE2b-128(key = backward root, "shallot-v2 use header")
 *
 * with M the handshake's key material. Kb_o seals the cells the hop
 * originates, Kb_f layers the cells it forwards: a hop's forwarding
 * keystream, which the hops around it can learn, says nothing about the
 * keystream of its own cells. Everything a layer needs is here, so that a
 * key schedule with epochs replaces a direction's keys with
 * setForwardKey / setBackwardKey without touching the layer code.
 */
export class HopKeys {
  /** Kf: the hop's forward layer. */
  readonly forward = Buffer.alloc(32);
  /** Kb_o: seals backward cells this hop originates. */
  readonly backwardOrigin = Buffer.alloc(32);
  /** Kb_f: the layer this hop adds to backward cells it forwards. */
  readonly backwardForward = Buffer.alloc(32);
  /** Kx: the header permutation of forwarded backward cells (AES-128). */
  private headerEnc!: Cipher;
  private headerDec!: Decipher;

  /** From the handshake's key material M (HOP_KEY_BYTES bytes); M is left to the caller to erase. */
  constructor(material: Buffer) {
    if (material.length < HOP_KEY_BYTES) throw new RangeError('hop key material too short');
    // Plain buffers, not sodium_malloc: guarded pages cost several memory
    // mappings each, and a relay holds thousands of circuits.
    const m = material.subarray(0, HOP_KEY_BYTES);
    const root = Buffer.alloc(DIRECTION_KEY_BYTES);
    // The label is BLAKE2b's key and M the message: M is longer than the
    // 64 bytes a BLAKE2b key may have.
    sodium.crypto_generichash(root, m, LABEL_FORWARD_ROOT);
    this.setForwardKey(root);
    sodium.crypto_generichash(root, m, LABEL_BACKWARD_ROOT);
    this.setBackwardKey(root);
    sodium.sodium_memzero(root);
  }

  /** Derive Kf from a forward direction key (32 bytes). */
  setForwardKey(key: Buffer): void {
    if (key.length !== DIRECTION_KEY_BYTES) throw new RangeError('direction key must be 32 bytes');
    sodium.crypto_generichash(this.forward, LABEL_USE_FORWARD, key);
  }

  /** Derive Kb_o, Kb_f and Kx from a backward direction key (32 bytes). */
  setBackwardKey(key: Buffer): void {
    if (key.length !== DIRECTION_KEY_BYTES) throw new RangeError('direction key must be 32 bytes');
    const both = Buffer.alloc(64);
    sodium.crypto_generichash(both, LABEL_USE_BACKWARD, key);
    both.copy(this.backwardOrigin, 0, 0, 32);
    both.copy(this.backwardForward, 0, 32, 64);
    sodium.sodium_memzero(both);
    const kx = Buffer.alloc(16);
    sodium.crypto_generichash(kx, LABEL_USE_HEADER, key);
    // ECB on exactly one block per call is a keyed permutation of that
    // block: no chaining state carries from one cell to the next.
    this.headerEnc = createCipheriv('aes-128-ecb', kx, null).setAutoPadding(false);
    this.headerDec = createDecipheriv('aes-128-ecb', kx, null).setAutoPadding(false);
    sodium.sodium_memzero(kx);
  }

  /** A HopKeys is one choice of keys for unwrapBackwardChoosing. */
  get count(): number {
    return 1;
  }

  key(): HopKeys {
    return this;
  }

  /** out[0, 16) = AES(Kx, x[0, 16)). */
  permute(x: Buffer, out: Buffer): void {
    this.headerEnc.update(x).copy(out);
  }

  /** out[0, 16) = AES^-1(Kx, x[0, 16)). */
  unpermute(x: Buffer, out: Buffer): void {
    this.headerDec.update(x).copy(out);
  }

  wipe(): void {
    this.forward.fill(0);
    this.backwardOrigin.fill(0);
    this.backwardForward.fill(0);
  }
}

// Bytes 16-24 are never written: the zero half of a backward nonce X || 0^8.
const nonce24 = Buffer.alloc(24);
// The same for a forward nonce N || 0^8.
const fwdNonce = Buffer.alloc(24);

/**
 * Every stream call covers a whole number of STREAM_RUN bytes, computing
 * up to 255 it does not use: libsodium's XChaCha20 does 512- and 256-byte
 * runs of blocks with vector code and each 64-byte block after them alone,
 * at several times the cost per byte (x86-64, AVX2: 1434 bytes 1180 ns,
 * 1536 bytes 750 ns). So the calls work in private buffers with room after
 * the data.
 */
const STREAM_RUN = 256;

function roundRun(len: number): number {
  return (len + STREAM_RUN - 1) & -STREAM_RUN;
}

/**
 * Sealing and opening take one stream call from block 0 over 64 zero
 * bytes and then the data: the output holds the Poly1305 key (block 0,
 * first 32 bytes), then the data XOR the stream from block 1, the same
 * bytes as a key call and a data call at counter 1 would give, for one
 * HChaCha20 and one native call instead of two. The data goes in at
 * work[HEAD, ...); opening decrypts into these private buffers and copies
 * out only after the tag verifies.
 */
const HEAD = 64;
/** wrapForward builds each cell at workOut[CELL_AT, ...), so that its C is at HEAD. */
const CELL_AT = HEAD - NONCE_BYTES - TAG_BYTES;
const MAX_WRAP_HOPS = 8;
const MAX_CELL_BYTES = 2048;
let workIn = Buffer.alloc(0);
let workOut = Buffer.alloc(0);
let keyIn = workIn;
let keyOut = workOut;
let wrapTag = workOut;
workFor(MAX_CELL_BYTES);

/** Makes the work buffers large enough for cells of `size` bytes. */
function workFor(size: number): void {
  // unwrapBackward's stream calls start up to 16 * MAX_HOPS bytes later.
  const need = HEAD + BACKWARD_X_BYTES * MAX_HOPS + roundRun(HEAD + size + SEQ_BYTES);
  if (need <= workIn.length) return;
  workIn = Buffer.alloc(need);
  workOut = Buffer.alloc(need);
  keyIn = workIn.subarray(0, 32);
  keyOut = workOut.subarray(0, 32);
  wrapTag = workOut.subarray(CELL_AT + NONCE_BYTES, HEAD);
}

/** out[at, at+len) = inp[at, at+len) XOR XChaCha20(key, nonce) from block `ic`. */
function xorStream(
  out: Buffer,
  inp: Buffer,
  at: number,
  len: number,
  nonce: Buffer,
  ic: number,
  key: Buffer,
): void {
  const end = at + roundRun(len);
  sodium.crypto_stream_xchacha20_xor_ic(
    out.subarray(at, end),
    inp.subarray(at, end),
    nonce,
    ic,
    key,
  );
}

/** Seal or open the data at inp[HEAD, len): key at out[0, 32), result at out[HEAD, len). */
function streamFromBlock0(out: Buffer, inp: Buffer, len: number, nonce: Buffer, key: Buffer): void {
  inp.fill(0, 0, HEAD);
  xorStream(out, inp, 0, len, nonce, 0, key);
}

/**
 * Random bytes for the default `random` of wrapForward and sealBackward:
 * a getrandom system call costs about as much as 24 bytes take to
 * generate, so one call fills a pool and each nonce or X is a slice of
 * it, zeroed as it is handed out so that the pool holds no value in use.
 */
const POOL_BYTES = 4096;
const pool = Buffer.alloc(POOL_BYTES);
let poolUsed = POOL_BYTES;

function takeRandom(dst: Buffer, off: number, len: number): void {
  if (len > POOL_BYTES) {
    sodium.randombytes_buf(dst.subarray(off, off + len));
    return;
  }
  if (poolUsed + len > POOL_BYTES) {
    sodium.randombytes_buf(pool);
    poolUsed = 0;
  }
  pool.copy(dst, off, poolUsed, poolUsed + len);
  pool.fill(0, poolUsed, poolUsed + len);
  poolUsed += len;
}

function pooledRandom(buf: Buffer): void {
  takeRandom(buf, 0, buf.length);
}

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
  ksTmp.fill(0, 0, roundRun(skip + len));
  xorStream(ksTmp, ksTmp, 0, skip + len, nonce, 1 + block, key);
  return ksTmp.subarray(skip, skip + len);
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
  keys: ForwardLayerKeys,
  cell: Buffer,
  off: number,
  size: number,
  scratch: Buffer,
): number {
  if (size < FORWARD_HOP_OVERHEAD + 8 || off < 0 || off + size > cell.length) return 0;
  if (scratch.length < size + 8) return 0;
  cell.copy(fwdNonce, 0, off, off + NONCE_BYTES);
  const tag = cell.subarray(off + NONCE_BYTES, off + NONCE_BYTES + TAG_BYTES);
  const c = cell.subarray(off + NONCE_BYTES + TAG_BYTES, off + size);
  workFor(size);
  const end = HEAD + size + 8;
  c.copy(workIn, HEAD);
  workIn.fill(0, HEAD + c.length, end);
  streamFromBlock0(workOut, workIn, end, fwdNonce, keys.forward);
  if (!sodium.crypto_onetimeauth_verify(tag, c, keyOut)) return 0;
  workOut.copy(scratch, 0, HEAD, end);
  const seq = readSeq(scratch, 0);
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
  hops: ForwardLayerKeys[],
  seqs: number[],
  payload: Buffer,
  size: number,
  out: Buffer,
  padding: PaddingSource,
  random: (buf: Buffer) => void = pooledRandom,
): void {
  const n = hops.length;
  if (n < 1 || n > MAX_WRAP_HOPS) throw new RangeError('a circuit has 1 to 8 hops');
  if (size > MAX_CELL_BYTES) throw new RangeError('cell too large');
  if (payload.length > forwardCapacity(size, n)) throw new RangeError('payload too large for cell');
  // Work buffers are module-level and reused: no allocation per cell on
  // the client's hot path (the process is single-threaded).
  const nonces = wrapNonces;
  for (let i = 0; i < n; i += 1) random(wrapNonceHeads[i]!);
  // Filler: what hops 1..n-1 append, as the last hop will see it.
  let phi = phiA;
  let phiLen = 0;
  for (let h = 1; h < n; h += 1) {
    const seg = keystream(hops[h - 1]!.forward, nonces[h - 1]!, 8 + size - F * h, F * h);
    const next = phi === phiA ? phiB : phiA;
    for (let j = 0; j < phiLen; j += 1) next[j] = phi[j]! ^ seg[j]!;
    seg.copy(next, phiLen, phiLen);
    phi = next;
    phiLen = F * h;
  }
  const cLen = size - NONCE_BYTES - TAG_BYTES;
  // The last hop's layer, m = workIn[HEAD, HEAD+cLen): seq, payload,
  // padding; its tail forced to the filler.
  writeSeq(workIn, HEAD, seqs[n - 1]!);
  // The last hop is told the cell is for it, even if it has a next hop:
  // an EXTEND resent after a lost EXTENDED must not be forwarded.
  workIn[HEAD] = SEQ_FLAG_FOR_THIS_HOP;
  payload.copy(workIn, HEAD + SEQ_BYTES);
  padding.fill(workIn.subarray(HEAD + SEQ_BYTES + payload.length, HEAD + cLen));
  sealForwardLayer(hops[n - 1]!, nonces[n - 1]!, cLen, phi, phiLen);
  // Outer layers, innermost first: each takes the cell sealed last out of
  // workOut before sealing over it.
  for (let i = n - 2; i >= 0; i -= 1) {
    writeSeq(workIn, HEAD, seqs[i]!);
    workOut.copy(workIn, HEAD + SEQ_BYTES, CELL_AT, CELL_AT + size - FORWARD_HOP_OVERHEAD);
    sealForwardLayer(hops[i]!, nonces[i]!, cLen, phi, 0);
  }
  workOut.copy(out, 0, CELL_AT, CELL_AT + size);
}

const F = FORWARD_HOP_OVERHEAD;
/** XChaCha20 nonces N || 0^8; wrapNonceHeads are their N parts, for `random`. */
const wrapNonces = Array.from({ length: MAX_WRAP_HOPS }, () => Buffer.alloc(24));
const wrapNonceHeads = wrapNonces.map((b) => b.subarray(0, NONCE_BYTES));
const phiA = Buffer.alloc(F * MAX_WRAP_HOPS);
const phiB = Buffer.alloc(F * MAX_WRAP_HOPS);
const ksTmp = Buffer.alloc(roundRun(64 + F * MAX_WRAP_HOPS));

/**
 * Seal m = workIn[HEAD, HEAD+cLen) into the cell N | T | C at
 * workOut[CELL_AT, ...), the last `tailLen` bytes of C replaced by `tail`.
 * The nonce N (without its 0^8) goes in last, between the Poly1305 key
 * and the tag.
 */
function sealForwardLayer(
  keys: ForwardLayerKeys,
  nonce: Buffer,
  cLen: number,
  tail: Buffer,
  tailLen: number,
): void {
  streamFromBlock0(workOut, workIn, HEAD + cLen, nonce, keys.forward);
  if (tailLen > 0) tail.copy(workOut, HEAD + cLen - tailLen, 0, tailLen);
  sodium.crypto_onetimeauth(wrapTag, workOut.subarray(HEAD, HEAD + cLen), keyOut);
  nonce.copy(workOut, CELL_AT, 0, NONCE_BYTES);
}

// --- backward ---------------------------------------------------------------

/**
 * Originating hop: seal `body` (at most backwardCapacity(size) bytes,
 * zero-padded) with sequence number `seq` into a backward cell of `size`
 * bytes at `out[0, size)`. The tag covers all but the last
 * BACKWARD_TAIL_BYTES of the ciphertext: that tail is keystream, which the
 * forwarding hops push out of the cell.
 */
export function sealBackward(
  keys: HopKeys,
  seq: number,
  body: Buffer,
  size: number,
  out: Buffer,
  random: (buf: Buffer) => void = pooledRandom,
): void {
  if (body.length > backwardCapacity(size)) throw new RangeError('body too large for cell');
  if (random === pooledRandom) takeRandom(out, 0, BACKWARD_X_BYTES);
  else random(out.subarray(0, BACKWARD_X_BYTES));
  out.copy(nonce24, 0, 0, BACKWARD_X_BYTES);
  workFor(size);
  const end = HEAD + size - BACKWARD_X_BYTES - TAG_BYTES;
  writeSeq(workIn, HEAD, seq);
  body.copy(workIn, HEAD + SEQ_BYTES);
  workIn.fill(0, HEAD + SEQ_BYTES + body.length, end);
  streamFromBlock0(workOut, workIn, end, nonce24, keys.backwardOrigin);
  sodium.crypto_onetimeauth(
    out.subarray(BACKWARD_X_BYTES, BACKWARD_X_BYTES + TAG_BYTES),
    workOut.subarray(HEAD, end - BACKWARD_TAIL_BYTES),
    keyOut,
  );
  workOut.copy(out, BACKWARD_X_BYTES + TAG_BYTES, HEAD, end);
}

/**
 * Forwarding hop: add this hop's layer to the backward cell at
 * `cell[off, off+size)` in place. `counter` is this hop's backward counter
 * on the circuit: 1 for the first cell it forwards, one more for each
 * after, never repeated (the caller keeps it). Returns false, changing
 * nothing, for a bad size or a counter out of range.
 */
export function layerBackward(
  keys: HopKeys,
  counter: number,
  cell: Buffer,
  off: number,
  size: number,
): boolean {
  if (size < BACKWARD_OVERHEAD || off < 0 || off + size > cell.length) return false;
  if (!Number.isSafeInteger(counter) || counter < 1) return false;
  // The header: AES(Kx, u64(c) || 0^8), a function of the counter only.
  writeU64(headerIn, 0, counter);
  headerIn.fill(0, 8, 16);
  keys.permute(headerIn, nonce24);
  // The body: the incoming header and all of B but its last 16 bytes, that
  // is cell[0, S-16), under a keystream no other cell of this hop uses.
  const len = size - BACKWARD_X_BYTES;
  workFor(size);
  cell.copy(workIn, 0, off, off + len);
  xorStream(workOut, workIn, 0, len, nonce24, 0, keys.backwardForward);
  workOut.copy(cell, off + BACKWARD_X_BYTES, 0, len);
  nonce24.copy(cell, off, 0, BACKWARD_X_BYTES);
  return true;
}

// layerBackward's u64(c) || 0^8 (bytes 8-16 stay zero there); unwrapBackward
// uses it for the header it inverts and writes all 16 bytes, so
// layerBackward clears the zero half again before use.
const headerIn = Buffer.alloc(16);
const headerOut = Buffer.alloc(16);
const backTag = Buffer.alloc(TAG_BYTES);

function writeU64(buf: Buffer, o: number, v: number): void {
  buf.writeUInt32BE(Math.floor(v / 0x1_0000_0000), o);
  buf.writeUInt32BE(v >>> 0, o + 4);
}

/**
 * The keys a hop's backward layer may be under, in the order to try (the
 * key epochs of docs/protocol.md 8.10: current, next step, next slot,
 * previous). A HopKeys is a choice of one.
 */
export interface BackwardKeyChoice {
  readonly count: number;
  key(i: number): HopKeys;
}

/** Which key of each hop's choice opened the last cell unwrapBackwardChoosing accepted. */
const noChoice: number[] = [];

/**
 * Client side: remove the layers of hops[0..origin) from a backward cell,
 * then authenticate and open the origin hop's seal. Returns the origin's
 * sequence number (> 0) with the relay message at
 * `cell[off+BACKWARD_BODY_AT, ...)`, backwardCapacity(size) bytes of it;
 * or 0, leaving the cell as it was, if a layer's header or the origin's
 * tag does not verify. A path longer than MAX_HOPS cannot be opened: its
 * forwarders pushed the origin's tagged bytes out.
 */
export function unwrapBackward(
  hops: HopKeys[],
  origin: number,
  cell: Buffer,
  off: number,
  size: number,
): number {
  return unwrapBackwardChoosing(hops, origin, cell, off, size, noChoice);
}

/**
 * unwrapBackward where each hop's layer may be under one of several keys:
 * a forwarding hop's is the first whose header inverts to u64(c) || 0^8
 * (a wrong key passes with probability 2^-64), the origin's the first
 * whose tag verifies. On success `chosen[i]` (if `chosen` has room) is the
 * index of the key that opened hop i's layer.
 */
export function unwrapBackwardChoosing(
  hops: readonly BackwardKeyChoice[],
  origin: number,
  cell: Buffer,
  off: number,
  size: number,
  chosen: number[],
): number {
  if (origin < 0 || origin >= hops.length || origin > MAX_HOPS - 1) return 0;
  if (size < BACKWARD_OVERHEAD || off < 0 || off + size > cell.length) return 0;
  // The cell is worked on in place in workIn from HEAD: removing a layer
  // decrypts what follows its header where it lies, and the next header is
  // then the 16 bytes after it.
  workFor(size);
  cell.copy(workIn, HEAD, off, off + size);
  let at = HEAD;
  let len = size - BACKWARD_X_BYTES;
  for (let i = 0; i < origin; i += 1) {
    const choice = hops[i]!;
    let hop: HopKeys | null = null;
    workIn.copy(headerIn, 0, at, at + BACKWARD_X_BYTES);
    for (let k = 0; k < choice.count && !hop; k += 1) {
      const h = choice.key(k);
      h.unpermute(headerIn, headerOut);
      // u64(c) || 0^8: a header no forwarding hop wrote is refused here.
      if (headerOut.readUInt32BE(8) === 0 && headerOut.readUInt32BE(12) === 0) {
        hop = h;
        if (i < chosen.length) chosen[i] = k;
      }
    }
    if (!hop) return 0;
    headerIn.copy(nonce24, 0);
    xorStream(workIn, workIn, at + BACKWARD_X_BYTES, len, nonce24, 0, hop.backwardForward);
    at += BACKWARD_X_BYTES;
    len -= BACKWARD_X_BYTES;
  }
  // The origin's cell: X | T | C, C of a fixed length whatever the path.
  const cLen = size - BACKWARD_X_BYTES - TAG_BYTES - BACKWARD_TAIL_BYTES;
  workIn.copy(nonce24, 0, at, at + BACKWARD_X_BYTES);
  workIn.copy(backTag, 0, at + BACKWARD_X_BYTES, at + BACKWARD_X_BYTES + TAG_BYTES);
  const cAt = at + BACKWARD_X_BYTES + TAG_BYTES;
  workIn.copy(workOut, HEAD, cAt, cAt + cLen);
  const choice = hops[origin]!;
  for (let k = 0; k < choice.count; k += 1) {
    // workOut[HEAD, HEAD+cLen) keeps C; each try decrypts it into workIn.
    streamFromBlock0(workIn, workOut, HEAD + cLen, nonce24, choice.key(k).backwardOrigin);
    if (!sodium.crypto_onetimeauth_verify(backTag, workOut.subarray(HEAD, HEAD + cLen), keyIn)) {
      continue;
    }
    const seq = readSeq(workIn, HEAD);
    if (seq === 0) return 0;
    if (origin < chosen.length) chosen[origin] = k;
    workIn.copy(cell, off + BACKWARD_X_BYTES + TAG_BYTES, HEAD, HEAD + cLen);
    return seq;
  }
  return 0;
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
    if (buf.length > padTmp.length) {
      buf.fill(0);
      sodium.crypto_stream_xchacha20_xor_ic(buf, buf, this.nonce, 0, this.key);
      return;
    }
    // Whole runs of stream (see STREAM_RUN) in a buffer of our own.
    padTmp.fill(0, 0, roundRun(buf.length));
    xorStream(padTmp, padTmp, 0, buf.length, this.nonce, 0, this.key);
    padTmp.copy(buf, 0, 0, buf.length);
  }
}

const padTmp = Buffer.alloc(roundRun(MAX_CELL_BYTES));
