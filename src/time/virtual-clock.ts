/**
 * A clock whose time moves only when told to (boringtun's mock clock), for
 * tests and the simulator. Timers fire in a deterministic order: by due
 * time, and timers due at the same instant in the order they were set (a
 * repeating timer takes its place again when it is re-armed, after its
 * callback). A timer set by a timer is handled in the same run if it
 * falls due within it.
 *
 * `advance`/`runUntil` are synchronous: promise continuations of the
 * code under test run only after they return. Code that awaits between
 * timers (a build step waiting for its reply) is driven with
 * `advanceAsync`, which yields to the event loop after each instant that
 * had timers, so that in-memory I/O and promise chains settle at the
 * simulated time they belong to.
 *
 * Bounded: at most `maxTimers` live timers (a leak shows as an error, not
 * as memory), and at most `maxFiringsPerRun` callbacks per call (a timer
 * storm, such as a repeating timer that re-arms itself at 1 ms, shows as
 * an error instead of a hang).
 */
import { timerDelay, type Clock, type TimerHandle } from './clock.js';

export const DEFAULT_MAX_TIMERS = 1_000_000;
export const DEFAULT_MAX_FIRINGS_PER_RUN = 10_000_000;

interface Entry {
  due: number;
  seq: number;
  fn: () => void;
  /** 0 for a one-shot timer. */
  intervalMs: number;
  cancelled: boolean;
}

export interface VirtualClockOptions {
  /** Time at the start, ms on the epoch scale (default 1.7e12, a time in 2023). */
  startMs?: number;
  maxTimers?: number;
  maxFiringsPerRun?: number;
}

export class VirtualClock implements Clock {
  private t: number;
  private seq = 0;
  /** Binary min-heap on (due, seq); cancelled entries are skipped when they surface. */
  private heap: Entry[] = [];
  private live = 0;
  private running = false;
  private readonly maxTimers: number;
  private readonly maxFiringsPerRun: number;
  /** Callbacks run so far (all calls). */
  fired = 0;

  constructor(options: VirtualClockOptions = {}) {
    this.t = options.startMs ?? 1_700_000_000_000;
    this.maxTimers = options.maxTimers ?? DEFAULT_MAX_TIMERS;
    this.maxFiringsPerRun = options.maxFiringsPerRun ?? DEFAULT_MAX_FIRINGS_PER_RUN;
  }

  readonly now = (): number => this.t;

  setTimer(ms: number, fn: () => void): TimerHandle {
    return this.add(ms, fn, 0);
  }

  setRepeating(ms: number, fn: () => void): TimerHandle {
    return this.add(ms, fn, timerDelay(ms));
  }

  /** Timers set and not yet fired or cancelled. */
  get pending(): number {
    return this.live;
  }

  /** Due time of the next timer, or null if none is set. */
  nextDue(): number | null {
    this.skipCancelled();
    return this.heap[0]?.due ?? null;
  }

  /** Move time forward by `ms`, firing every timer due on the way. Returns callbacks run. */
  advance(ms: number): number {
    if (!(ms >= 0)) throw new RangeError(`cannot advance by ${ms} ms`);
    return this.runUntil(this.t + ms);
  }

  /**
   * Fire, in order, every timer due at or before `t` (including those set
   * by the callbacks), then set the time to `t`. Time never goes back: a
   * `t` in the past fires what is due now and leaves the time as it is.
   */
  runUntil(t: number): number {
    if (Number.isNaN(t)) throw new RangeError('runUntil(NaN)');
    if (this.running) throw new Error('VirtualClock.runUntil called from inside a timer');
    this.running = true;
    let n = 0;
    try {
      for (;;) {
        const e = this.popDue(t);
        if (!e) break;
        n += 1;
        if (n > this.maxFiringsPerRun) {
          throw new Error(
            `timer storm: more than ${this.maxFiringsPerRun} callbacks before ${t} ms`,
          );
        }
        this.t = Math.max(this.t, e.due);
        this.fire(e);
      }
      this.t = Math.max(this.t, t);
    } finally {
      this.running = false;
      this.fired += n;
    }
    return n;
  }

  /**
   * Move time forward by `ms` one instant at a time: fire the timers due
   * at the next instant, then await `settle()` (default: one turn of the
   * event loop, which runs every queued promise continuation and
   * setImmediate callback), and so on. Returns callbacks run.
   */
  async advanceAsync(
    ms: number,
    settle: () => Promise<void> = () => new Promise((r) => setImmediate(r)),
  ): Promise<number> {
    if (!(ms >= 0)) throw new RangeError(`cannot advance by ${ms} ms`);
    const end = this.t + ms;
    let n = 0;
    await settle();
    for (;;) {
      const due = this.nextDue();
      if (due === null || due > end) break;
      n += this.runUntil(due);
      await settle();
    }
    n += this.runUntil(end);
    await settle();
    return n;
  }

  private add(ms: number, fn: () => void, intervalMs: number): TimerHandle {
    if (this.live >= this.maxTimers) {
      throw new Error(`VirtualClock: more than ${this.maxTimers} timers set`);
    }
    const e: Entry = { due: this.t + timerDelay(ms), seq: 0, fn, intervalMs, cancelled: false };
    this.push(e);
    this.live += 1;
    const h: TimerHandle = {
      cancel: () => {
        if (e.cancelled) return;
        e.cancelled = true;
        this.live -= 1;
        this.compactIfSparse();
      },
      unref: () => h,
    };
    return h;
  }

  private fire(e: Entry): void {
    if (e.intervalMs === 0) {
      e.cancelled = true;
      this.live -= 1;
      e.fn();
      return;
    }
    // Re-armed after the callback: a cancel() inside it sticks, and a timer
    // the callback sets for the same instant comes first.
    e.fn();
    if (e.cancelled) return;
    e.due += e.intervalMs;
    this.push(e);
  }

  private popDue(t: number): Entry | null {
    this.skipCancelled();
    const top = this.heap[0];
    if (!top || top.due > t) return null;
    this.pop();
    return top;
  }

  private skipCancelled(): void {
    while (this.heap.length > 0 && (this.heap[0] as Entry).cancelled) this.pop();
  }

  /** Cancelled entries are dropped wholesale once they are most of the heap. */
  private compactIfSparse(): void {
    if (this.heap.length < 64 || this.live * 2 > this.heap.length) return;
    const keep = this.heap.filter((e) => !e.cancelled);
    this.heap = [];
    // Re-pushing gives new sequence numbers in the old (due, seq) order.
    keep.sort((a, b) => a.due - b.due || a.seq - b.seq);
    for (const e of keep) this.push(e);
  }

  // --- heap on (due, seq) ---------------------------------------------------------

  private push(e: Entry): void {
    e.seq = this.seq++;
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(e, h[p] as Entry)) break;
      h[i] = h[p] as Entry;
      i = p;
    }
    h[i] = e;
  }

  private pop(): void {
    const h = this.heap;
    const last = h.pop() as Entry;
    if (h.length === 0) return;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= h.length) break;
      const r = l + 1;
      const c = r < h.length && before(h[r] as Entry, h[l] as Entry) ? r : l;
      if (!before(h[c] as Entry, last)) break;
      h[i] = h[c] as Entry;
      i = c;
    }
    h[i] = last;
  }
}

function before(a: Entry, b: Entry): boolean {
  return a.due < b.due || (a.due === b.due && a.seq < b.seq);
}
