/**
 * The keys of one hop of a circuit, through their epochs (docs/protocol.md
 * 8.10): what a relay holds for a circuit, and what the client holds per
 * hop. The handshake's material M gives one root per direction and is
 * erased; each epoch key gives the keys its onion layer uses (the labels
 * and the derivation of docs/protocol.md 7.3, with the epoch key in place
 * of the root):
 *
 *   SK_0(forward)  = BLAKE2b-256(key = "shallot-v2 forward root", M)
 *   SK_0(backward) = BLAKE2b-256(key = "shallot-v2 backward root", M)
 *   Kf = KDF(K, "shallot-v2 use forward")
 *   Kb_o | Kb_f = KDF(K, "shallot-v2 use backward") (64 bytes),  Kx = KDF(K, "shallot-v2 use header") (16)
 *
 * The relay receives forward cells (EpochReceiver: tries the keys a cell
 * may be under) and sends backward ones; the client the other way round.
 * The cell paths below allocate nothing: the tries reuse the receiver's
 * key positions, the client's per-cell key list is one array per circuit.
 */
import sodium from 'sodium-native';
import { EpochReceiver, EpochSender, epochKdf, type EpochKeyUse } from './key-epochs.js';
import {
  HOP_KEY_BYTES,
  HopKeys,
  peelForward,
  unwrapBackwardChoosing,
  type BackwardKeyChoice,
  type ForwardLayerKeys,
} from './onion.js';

const LABEL_ROOT_FORWARD = Buffer.from('shallot-v2 forward root', 'ascii');
const LABEL_ROOT_BACKWARD = Buffer.from('shallot-v2 backward root', 'ascii');
const LABEL_USE_FORWARD = Buffer.from('shallot-v2 use forward', 'ascii');

/** SK_0 of each direction from the handshake material (32 bytes each). */
export function hopRoots(material: Buffer, forward: Buffer, backward: Buffer): void {
  sodium.crypto_generichash(forward, material, LABEL_ROOT_FORWARD);
  sodium.crypto_generichash(backward, material, LABEL_ROOT_BACKWARD);
}

/** The forward layer key of one epoch. */
export class ForwardEpochKey implements ForwardLayerKeys {
  readonly forward = Buffer.alloc(32);
}

export const forwardUse: EpochKeyUse<ForwardEpochKey> = {
  create: () => new ForwardEpochKey(),
  load: (h, key) => epochKdf(h.forward, key, LABEL_USE_FORWARD),
  wipe: (h) => sodium.sodium_memzero(h.forward),
};

const zeroKey = Buffer.alloc(32);
const noMaterial = Buffer.alloc(HOP_KEY_BYTES);

/**
 * An epoch's backward keys in a HopKeys (setBackwardKey: Kb_o | Kb_f and
 * Kx as section 7.3 derives them from a root). Its forward key is unused.
 */
export const backwardUse: EpochKeyUse<HopKeys> = {
  create: () => {
    const h = new HopKeys(noMaterial);
    sodium.sodium_memzero(h.forward);
    return h;
  },
  load: (h, key) => h.setBackwardKey(key),
  wipe: (h) => {
    h.wipe();
    // The AES key schedule lives in OpenSSL's context: replace it by one of a zero key.
    h.setBackwardKey(zeroKey);
    sodium.sodium_memzero(h.backwardOrigin);
    sodium.sodium_memzero(h.backwardForward);
  },
};

/**
 * A relay's keys for one circuit. `createdAt` is when it processed the
 * CREATE (its slot 0 starts then): it receives forward cells and sends
 * backward ones, both those it originates and those it forwards (one
 * chain: the same epoch key gives Kb_o, Kb_f and Kx).
 */
export class RelayHopKeys {
  readonly forward: EpochReceiver<ForwardEpochKey>;
  readonly backward: EpochSender<HopKeys>;

  constructor(material: Buffer, createdAt: number) {
    const f = Buffer.alloc(32);
    const b = Buffer.alloc(32);
    hopRoots(material, f, b);
    this.forward = new EpochReceiver(f, createdAt, forwardUse);
    this.backward = new EpochSender(b, createdAt, backwardUse);
    sodium.sodium_memzero(f);
    sodium.sodium_memzero(b);
  }

  /**
   * Remove this hop's forward layer (peelForward) under whichever epoch
   * key opens it; 0 if none does (the caller drops and counts the cell).
   */
  peel(cell: Buffer, off: number, size: number, scratch: Buffer, now: number): number {
    const rx = this.forward;
    const n = rx.tries(now);
    for (let i = 0; i < n; i += 1) {
      const seq = peelForward(rx.key(i), cell, off, size, scratch);
      if (seq > 0) {
        rx.accept(i, now);
        return seq;
      }
    }
    rx.reject();
    return 0;
  }

  /** The backward keys for the next cell this hop seals or forwards at `now`. */
  backwardKey(now: number): HopKeys {
    return this.backward.key(now);
  }

  /** Erase keys whose time is up (the relay's tick). */
  advance(now: number): void {
    this.forward.advance(now);
    this.backward.advance(now);
  }

  wipe(): void {
    this.forward.wipe();
    this.backward.wipe();
  }
}

/**
 * The client's keys for one hop. `createdAt` is when the hop's CREATED or
 * EXTENDED arrived: after the relay made its state, so the client's slots
 * never start before the relay's (the window's argument needs that).
 */
export class ClientHopKeys implements BackwardKeyChoice {
  readonly forward: EpochSender<ForwardEpochKey>;
  readonly backward: EpochReceiver<HopKeys>;
  /** How many backward keys to try for the cell at hand (set by `prepare`). */
  count = 0;

  constructor(material: Buffer, createdAt: number) {
    const f = Buffer.alloc(32);
    const b = Buffer.alloc(32);
    hopRoots(material, f, b);
    this.forward = new EpochSender(f, createdAt, forwardUse);
    this.backward = new EpochReceiver(b, createdAt, backwardUse);
    sodium.sodium_memzero(f);
    sodium.sodium_memzero(b);
  }

  /** Set up the backward keys to try at `now`. */
  prepare(now: number): void {
    this.count = this.backward.tries(now);
  }

  key(i: number): HopKeys {
    return this.backward.key(i);
  }

  advance(now: number): void {
    this.forward.advance(now);
    this.backward.advance(now);
  }

  wipe(): void {
    this.forward.wipe();
    this.backward.wipe();
  }
}

/**
 * The forward keys of every hop for the next cell at `now`, into `out`
 * (reused per circuit): what wrapForward takes.
 */
export function forwardKeysFor(
  hops: readonly ClientHopKeys[],
  now: number,
  out: ForwardLayerKeys[],
): ForwardLayerKeys[] {
  out.length = hops.length;
  for (let i = 0; i < hops.length; i += 1) out[i] = (hops[i] as ClientHopKeys).forward.key(now);
  return out;
}

/**
 * Client side: unwrapBackward through the key epochs of every hop. Each
 * hop up to the origin tries its backward keys (current, next step, next
 * slot, previous); on success every one of them steps to the key that
 * opened its layer. `chosen` is scratch of MAX_HOPS entries, reused.
 */
export function unwrapBackwardEpochs(
  hops: readonly ClientHopKeys[],
  origin: number,
  cell: Buffer,
  off: number,
  size: number,
  now: number,
  chosen: number[],
): number {
  if (origin < 0 || origin >= hops.length) return 0;
  for (let i = 0; i <= origin; i += 1) (hops[i] as ClientHopKeys).prepare(now);
  const seq = unwrapBackwardChoosing(hops, origin, cell, off, size, chosen);
  for (let i = 0; i <= origin; i += 1) {
    const rx = (hops[i] as ClientHopKeys).backward;
    if (seq > 0) rx.accept(chosen[i] as number, now);
    else rx.reject();
  }
  return seq;
}
