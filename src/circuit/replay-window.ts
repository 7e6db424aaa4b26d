/**
 * Sliding replay window over 64-bit sequence numbers (as WireGuard and
 * IPsec keep one): a number is accepted once, if it is newer than the
 * newest accepted minus the window size. Sequence numbers start at 1 and
 * stay below 2^53 (a JavaScript number is exact there; at a million cells
 * a second that lasts 285 years).
 *
 * Mark only after the cell authenticated: the number comes from inside it.
 */
export const REPLAY_WINDOW_SIZE = 2048;
const WORDS = REPLAY_WINDOW_SIZE / 32;

export class ReplayWindow {
  private readonly bits = new Uint32Array(WORDS);
  private top = 0;

  /** True (and remembered) if `seq` is fresh; false for replays, too old, or 0. */
  accept(seq: number): boolean {
    if (!Number.isSafeInteger(seq) || seq <= 0) return false;
    if (seq > this.top) {
      const advance = seq - this.top;
      if (advance >= REPLAY_WINDOW_SIZE) this.bits.fill(0);
      else for (let s = this.top + 1; s <= seq; s += 1) this.clear(s);
      this.top = seq;
      this.set(seq);
      return true;
    }
    if (this.top - seq >= REPLAY_WINDOW_SIZE) return false;
    const word = (seq % REPLAY_WINDOW_SIZE) >>> 5;
    const bit = 1 << (seq & 31);
    if (((this.bits[word] as number) & bit) !== 0) return false;
    this.bits[word] = (this.bits[word] as number) | bit;
    return true;
  }

  private set(seq: number): void {
    const word = (seq % REPLAY_WINDOW_SIZE) >>> 5;
    this.bits[word] = (this.bits[word] as number) | (1 << (seq & 31));
  }

  private clear(seq: number): void {
    const word = (seq % REPLAY_WINDOW_SIZE) >>> 5;
    this.bits[word] = (this.bits[word] as number) & ~(1 << (seq & 31));
  }
}
