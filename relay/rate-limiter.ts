/**
 * A token bucket: `ratePerS` tokens a second, at most `burst` saved up.
 * Time comes in as `now` (ms), so tests drive it with a virtual clock.
 * The relay keeps one per neighbour for CREATE and one for EXTEND
 * (docs/protocol.md section 7.6).
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly ratePerS: number,
    private readonly burst: number,
    now: number,
  ) {
    this.tokens = burst;
    this.last = now;
  }

  /** Take one token if there is one; false means over the rate. */
  take(now: number): boolean {
    if (now > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.ratePerS) / 1000);
      this.last = now;
    }
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
