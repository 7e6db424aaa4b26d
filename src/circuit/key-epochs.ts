/**
 * Key epochs of a circuit (docs/protocol.md, section 8.10): forward secrecy
 * within a circuit. Each hop and each direction has its own chain of keys;
 * a key is used for one epoch and erased after it, so that memory seized
 * at time t holds no key under which a cell older than t - W was sent
 * (W = EPOCH_WINDOW_MS).
 *
 * Two chains, both one-way (KDF below):
 *
 *   slot chain   SK_0 (from the handshake), SK_{j+1} = KDF(SK_j, "slot next")
 *   epoch keys   K_{j,0} = KDF(SK_j, "slot key"),  K_{j,m+1} = KDF(K_{j,m}, "epoch next")
 *
 * Time is cut into slots of EPOCH_MS, counted from the circuit's creation
 * on each side's own clock (durations only: the clocks need not agree).
 * The sender uses K_{j,0} at the start of slot j, and steps to K_{j,m+1}
 * after EPOCH_CELLS cells under K_{j,m}. Every slot starts a fresh
 * sub-chain from the slot chain, so the index of the key in use is tied to
 * time whatever the traffic did: a receiver that missed cells, or a sender
 * that stepped ahead by count, meet again at the next slot, and a
 * receiver can erase everything of slot j at a fixed time on its own
 * clock (slot end + EPOCH_GRACE_MS), whatever its peer does.
 *
 * The receiver does not know the sender's epoch (no epoch number crosses
 * the wire in clear: a counter in clear, equal at every hop of a circuit
 * that started at the same time, would let hops link cells of one
 * circuit). It tries, in order, its current key, the next key by count,
 * the next slot's first key (only within EPOCH_GRACE_MS of its slot
 * boundary) and the previous key (only for EPOCH_REORDER_MS after it
 * stepped, for reordered cells); one authenticator check per try. A
 * success under a next key makes that key current.
 *
 * Held at any time, per hop and direction: the slot chain secret SK_{j+1}
 * (it derives only later slots), and at most four epoch keys at the
 * receiver (previous, current, next by count, next slot), one at the
 * sender. Sans-IO: `now` (milliseconds) comes in as an argument; no timer,
 * no clock. The caller's tick calls `advance(now)` so that keys are erased
 * on time on an idle circuit.
 */
import sodium from 'sodium-native';

/** Length of a slot: no key is used for longer. */
export const EPOCH_MS = 60_000;
/**
 * Cells under one key before the sender steps to the next, at most.
 * 2^16 is 32 times the replay window (2048): any cell the replay window
 * can still accept is at most one step away from the newest, so previous,
 * current and next key cover every reordering the window tolerates. At
 * 1410-byte cells it is 92 MB, about 1.2 s of a circuit at 600 Mbit/s:
 * under load a seizure reveals at most about two epochs of cells, not
 * 60 s. One step costs one BLAKE2b call and one key load, nothing per cell.
 */
export const EPOCH_CELLS = 65_536;
/**
 * Slack around a receiver's slot boundary: the next slot's key is tried
 * from GRACE before it, and the slot's keys are erased GRACE after it. It
 * covers the offset of the two sides' clocks (the time from the relay's
 * CREATE to the client's CREATED or EXTENDED), network delay and the tick.
 */
export const EPOCH_GRACE_MS = 10_000;
/** A previous key stays for reordered cells this long after the step, at most. */
export const EPOCH_REORDER_MS = 2_000;
/** The forward-secrecy window W of a receiver: a slot's keys outlive its cells by at most this. */
export const EPOCH_WINDOW_MS = EPOCH_MS + EPOCH_GRACE_MS;
export const EPOCH_KEY_BYTES = 32;

const LABEL_SLOT_KEY = Buffer.from('shallot-v2 slot key', 'ascii');
const LABEL_SLOT_NEXT = Buffer.from('shallot-v2 slot next', 'ascii');
const LABEL_EPOCH_NEXT = Buffer.from('shallot-v2 epoch next', 'ascii');

/**
 * KDF(K, label) = BLAKE2b (libsodium crypto_generichash) keyed with K,
 * over the ASCII label, `out.length` bytes (16 to 64). One-way: the output
 * says nothing about K.
 */
export function epochKdf(out: Buffer, key: Buffer, label: Buffer): void {
  sodium.crypto_generichash(out, label, key);
}

/** What the onion layer does with an epoch key: its own key holder per epoch. */
export interface EpochKeyUse<T> {
  /** A holder with no key yet (allocated once per key position). */
  create(): T;
  /** Derive the use keys of epoch key `key` (32 bytes) into `holder`. */
  load(holder: T, key: Buffer): void;
  /** Zero every secret in `holder`. */
  wipe(holder: T): void;
}

/** One key position: the epoch key and the use keys derived from it. */
class EpochKey<T> {
  readonly key = Buffer.alloc(EPOCH_KEY_BYTES);
  live = false;
  /** Slot and step of the key, for tests and status (not secret). */
  slot = 0;
  step = 0;
  constructor(readonly use: T) {}
}

function setFrom<T>(k: EpochKey<T>, u: EpochKeyUse<T>, slot: number, step: number): void {
  u.load(k.use, k.key);
  k.live = true;
  k.slot = slot;
  k.step = step;
}

function erase<T>(k: EpochKey<T>, u: EpochKeyUse<T>): void {
  sodium.sodium_memzero(k.key);
  u.wipe(k.use);
  k.live = false;
}

/** What tests may see of a chain (buffers by reference: check them, never log them). */
export interface EpochInspection {
  slot: number;
  step: number;
  /** The slot chain secret SK_{slot+1}, or null once wiped. */
  chain: Buffer | null;
  /** The epoch keys held, with their slot and step. */
  keys: { slot: number; step: number; key: Buffer }[];
  /** Buffers of erased positions: all zero. */
  erased: Buffer[];
}

function inspectKeys<T>(
  slot: number,
  step: number,
  chain: Buffer,
  all: EpochKey<T>[],
): EpochInspection {
  const out: EpochInspection = { slot, step, chain: null, keys: [], erased: [] };
  if (all[0]?.live) out.chain = chain;
  else out.erased.push(chain);
  for (const k of all) {
    if (k.live) out.keys.push({ slot: k.slot, step: k.step, key: k.key });
    else out.erased.push(k.key);
  }
  return out;
}

/**
 * The sending side of one hop and direction: one key at a time.
 * `key(now)` before each cell; `advance(now)` on the owner's tick.
 */
export class EpochSender<T> {
  private readonly chain = Buffer.alloc(EPOCH_KEY_BYTES);
  private readonly cur: EpochKey<T>;
  private slot = 0;
  private step = 0;
  private sent = 0;
  private readonly slotEnd: number;
  /** Steps taken (slot and count), for counters. */
  steps = 0;

  /** `root` is SK_0 (copied; the caller erases its own); `createdAt` starts slot 0. */
  constructor(
    root: Buffer,
    private readonly createdAt: number,
    private readonly use: EpochKeyUse<T>,
    private readonly cellsPerEpoch = EPOCH_CELLS,
  ) {
    this.cur = new EpochKey(use.create());
    epochKdf(this.cur.key, root, LABEL_SLOT_KEY);
    epochKdf(this.chain, root, LABEL_SLOT_NEXT);
    setFrom(this.cur, use, 0, 0);
    this.slotEnd = createdAt + EPOCH_MS;
  }

  /** The key for the next cell at `now` (counts the cell). */
  key(now: number): T {
    this.advance(now);
    if (this.sent >= this.cellsPerEpoch) {
      epochKdf(this.cur.key, this.cur.key, LABEL_EPOCH_NEXT);
      this.step += 1;
      this.sent = 0;
      this.steps += 1;
      setFrom(this.cur, this.use, this.slot, this.step);
    }
    this.sent += 1;
    return this.cur.use;
  }

  /** Move to the slot of `now`, erasing the keys of earlier slots. */
  advance(now: number): void {
    if (!this.cur.live) return;
    const slot = Math.floor((now - this.createdAt) / EPOCH_MS);
    if (slot <= this.slot) return;
    for (let j = this.slot; j < slot; j += 1) {
      // cur <- K_{j+1,0} = KDF(SK_{j+1}); chain <- SK_{j+2}.
      epochKdf(this.cur.key, this.chain, LABEL_SLOT_KEY);
      epochKdf(this.chain, this.chain, LABEL_SLOT_NEXT);
    }
    this.slot = slot;
    this.step = 0;
    this.sent = 0;
    this.steps += 1;
    setFrom(this.cur, this.use, slot, 0);
  }

  /** When the current key must be gone at the latest (its slot's end). */
  get deadline(): number {
    return this.slotEnd + this.slot * EPOCH_MS;
  }

  wipe(): void {
    sodium.sodium_memzero(this.chain);
    erase(this.cur, this.use);
  }

  inspect(): EpochInspection {
    return inspectKeys(this.slot, this.step, this.chain, [this.cur]);
  }
}

/** Which key a successful try used, for `accept`. */
export const EpochTry = { current: 0, nextStep: 1, nextSlot: 2, previous: 3 } as const;
export type EpochTry = (typeof EpochTry)[keyof typeof EpochTry];

/**
 * The receiving side of one hop and direction. Per cell:
 *
 *   const n = rx.tries(now);
 *   for (let i = 0; i < n; i += 1) if (open(rx.key(i))) { rx.accept(i, now); break; }
 *
 * and `advance(now)` on the owner's tick. No allocation after construction.
 */
export class EpochReceiver<T> {
  private readonly chain = Buffer.alloc(EPOCH_KEY_BYTES);
  private cur: EpochKey<T>;
  private nextStep: EpochKey<T>;
  private nextSlot: EpochKey<T>;
  private prev: EpochKey<T>;
  private prevUntil = 0;
  private slot = 0;
  /** The keys to try, in order, as set by `tries` (positions in a fixed array). */
  private readonly order: (EpochKey<T> | null)[] = [null, null, null, null];
  private readonly kinds: EpochTry[] = [0, 0, 0, 0];
  /** Cells no key opened; steps taken by a cell; slots reached by the clock alone. */
  readonly stats = { unmatched: 0, steps: 0, forcedSlots: 0 };

  constructor(
    root: Buffer,
    private readonly createdAt: number,
    private readonly use: EpochKeyUse<T>,
  ) {
    this.cur = new EpochKey(use.create());
    this.nextStep = new EpochKey(use.create());
    this.nextSlot = new EpochKey(use.create());
    this.prev = new EpochKey(use.create());
    epochKdf(this.cur.key, root, LABEL_SLOT_KEY);
    epochKdf(this.chain, root, LABEL_SLOT_NEXT);
    setFrom(this.cur, use, 0, 0);
    this.fillNext();
  }

  /** The end of the current slot on this side's clock. */
  private get boundary(): number {
    return this.createdAt + (this.slot + 1) * EPOCH_MS;
  }

  /** When every key of the current slot is erased at the latest. */
  get deadline(): number {
    return this.boundary + EPOCH_GRACE_MS;
  }

  /** nextStep <- KDF(cur), nextSlot <- KDF(chain) (chain is SK_{slot+1}). */
  private fillNext(): void {
    epochKdf(this.nextStep.key, this.cur.key, LABEL_EPOCH_NEXT);
    setFrom(this.nextStep, this.use, this.slot, this.cur.step + 1);
    epochKdf(this.nextSlot.key, this.chain, LABEL_SLOT_KEY);
    setFrom(this.nextSlot, this.use, this.slot + 1, 0);
  }

  /** Enter the next slot: nextSlot becomes current; `keepPrev` keeps the old current for reordering. */
  private enterNextSlot(now: number, keepPrev: boolean): void {
    const oldDeadline = this.deadline;
    const old = this.cur;
    erase(this.prev, this.use);
    erase(this.nextStep, this.use);
    this.cur = this.nextSlot;
    this.nextSlot = this.prev;
    this.prev = old;
    if (keepPrev) this.prevUntil = Math.min(now + EPOCH_REORDER_MS, oldDeadline);
    else erase(this.prev, this.use);
    this.slot += 1;
    epochKdf(this.chain, this.chain, LABEL_SLOT_NEXT);
    this.fillNext();
  }

  /** Erase on time: the previous key after its grace, a slot's keys at its deadline. */
  advance(now: number): void {
    if (!this.cur.live) return;
    if (this.prev.live && now >= this.prevUntil) erase(this.prev, this.use);
    while (now >= this.deadline) {
      this.enterNextSlot(now, false);
      this.stats.forcedSlots += 1;
    }
  }

  /** Set up the keys to try at `now`; returns how many (1 to 4). */
  tries(now: number): number {
    this.advance(now);
    let n = 0;
    if (!this.cur.live) return 0;
    this.order[n] = this.cur;
    this.kinds[n++] = EpochTry.current;
    this.order[n] = this.nextStep;
    this.kinds[n++] = EpochTry.nextStep;
    if (now >= this.boundary - EPOCH_GRACE_MS) {
      this.order[n] = this.nextSlot;
      this.kinds[n++] = EpochTry.nextSlot;
    }
    if (this.prev.live) {
      this.order[n] = this.prev;
      this.kinds[n++] = EpochTry.previous;
    }
    return n;
  }

  /** The i-th key to try (after `tries`). */
  key(i: number): T {
    return (this.order[i] as EpochKey<T>).use;
  }

  /** The i-th key opened the cell: step forward if it was a next key. */
  accept(i: number, now: number): void {
    const kind = this.kinds[i];
    if (kind === EpochTry.nextStep) {
      // prev <- cur <- nextStep; the old prev's position takes the new next step.
      const spare = this.prev;
      erase(spare, this.use);
      this.prev = this.cur;
      this.prevUntil = Math.min(now + EPOCH_REORDER_MS, this.deadline);
      this.cur = this.nextStep;
      this.nextStep = spare;
      epochKdf(this.nextStep.key, this.cur.key, LABEL_EPOCH_NEXT);
      setFrom(this.nextStep, this.use, this.slot, this.cur.step + 1);
      this.stats.steps += 1;
    } else if (kind === EpochTry.nextSlot) {
      this.enterNextSlot(now, true);
      this.stats.steps += 1;
    }
    this.order.fill(null);
  }

  /** No key opened the cell (the caller drops it). */
  reject(): void {
    this.stats.unmatched += 1;
    this.order.fill(null);
  }

  wipe(): void {
    sodium.sodium_memzero(this.chain);
    for (const k of [this.cur, this.nextStep, this.nextSlot, this.prev]) erase(k, this.use);
    this.order.fill(null);
  }

  inspect(): EpochInspection {
    return inspectKeys(this.slot, this.cur.step, this.chain, [
      this.cur,
      this.nextStep,
      this.nextSlot,
      this.prev,
    ]);
  }
}
