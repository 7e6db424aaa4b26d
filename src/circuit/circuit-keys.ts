/**
 * The keys of one hop of a circuit, through their epochs (docs/protocol.md
 * 8.10): what a relay holds for a circuit, and what the client holds per
 * hop. The handshake's material M gives one root per direction and is
 * erased; each epoch key gives the keys its onion layer uses.
 *
 *   SK_0(forward)  = BLAKE2b-256(key = "shallot-v2 forward root", M)
 *   SK_0(backward) = BLAKE2b-256(key = "shallot-v2 backward root", M)
 *   Kf = KDF(K, "shallot-v2 use forward")
 *
 * The relay receives forward cells (EpochReceiver: tries the keys a cell
 * may be under) and sends backward ones; the client the other way round.
 * The cell paths below allocate nothing: the tries reuse the receiver's
 * key positions, the client's per-cell key list is one array per circuit.
 */
import sodium from 'sodium-native';
import { EpochReceiver, EpochSender, epochKdf, type EpochKeyUse } from './key-epochs.js';
import { HopKeys, peelForward, type ForwardLayerKeys } from './onion.js';

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

/**
 * A relay's keys for one circuit. `createdAt` is when it processed the
 * CREATE (its slot 0 starts then). The backward keys are still the
 * handshake's for the life of the circuit (see the report of this branch:
 * they move to epochs with the new backward construction).
 */
export class RelayHopKeys {
  readonly forward: EpochReceiver<ForwardEpochKey>;
  readonly backward: HopKeys;

  constructor(material: Buffer, createdAt: number) {
    const f = Buffer.alloc(32);
    const b = Buffer.alloc(32);
    hopRoots(material, f, b);
    this.forward = new EpochReceiver(f, createdAt, forwardUse);
    this.backward = new HopKeys(material);
    sodium.sodium_memzero(this.backward.forward); // forward layers use the epochs' Kf
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

  /** Erase keys whose time is up (the relay's tick). */
  advance(now: number): void {
    this.forward.advance(now);
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
export class ClientHopKeys {
  readonly forward: EpochSender<ForwardEpochKey>;
  readonly backward: HopKeys;

  constructor(material: Buffer, createdAt: number) {
    const f = Buffer.alloc(32);
    const b = Buffer.alloc(32);
    hopRoots(material, f, b);
    this.forward = new EpochSender(f, createdAt, forwardUse);
    this.backward = new HopKeys(material);
    sodium.sodium_memzero(this.backward.forward); // forward layers use the epochs' Kf
    sodium.sodium_memzero(f);
    sodium.sodium_memzero(b);
  }

  advance(now: number): void {
    this.forward.advance(now);
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

/** The backward keys of every hop (static for now), into `out`. */
export function backwardKeysOf(hops: readonly ClientHopKeys[], out: HopKeys[]): HopKeys[] {
  out.length = hops.length;
  for (let i = 0; i < hops.length; i += 1) out[i] = (hops[i] as ClientHopKeys).backward;
  return out;
}
