/**
 * The one clock and scheduler of the node code. Every timer of a relay,
 * client, exit and link (keepalives, dead-peer detection, re-key, build
 * steps, idle expiry, guard retries, descriptor republishing) is set
 * through a `Clock`, so that a test or the simulator can hand in a
 * `VirtualClock` (virtual-clock.ts) and jump ahead: the 180 s idle
 * expiry of a circuit is then a millisecond test.
 *
 * `now()` is milliseconds on the Unix epoch scale (descriptors and guard
 * state compare it with wall-clock times), and never goes backwards on
 * one clock. Timers fire no earlier than their delay; a delay under
 * 1 ms counts as 1 ms, as with Node's own timers, on both clocks.
 *
 * What stays on real time whatever the clock (see docs at each site):
 * OpenSSL's DTLS retransmit timer (LinkEndpoint.tick reads it through
 * `session.timeoutMs()`), bittorrent-dht's own timers and sockets, and
 * the UDP and TUN addons.
 */

/** A scheduled timer; `cancel()` is idempotent and safe from inside its own callback. */
export interface TimerHandle {
  cancel(): void;
  /**
   * Do not keep the process alive for this timer (Node's `unref`). A
   * no-op on a virtual clock, where nothing keeps a process alive.
   */
  unref(): TimerHandle;
}

export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
  /** Call `fn` once, `ms` from now. */
  setTimer(ms: number, fn: () => void): TimerHandle;
  /** Call `fn` every `ms` from now on, until cancelled. */
  setRepeating(ms: number, fn: () => void): TimerHandle;
}

/** Delays as Node's timers take them: at least 1 ms, NaN and negatives as 1. */
export function timerDelay(ms: number): number {
  return ms >= 1 ? ms : 1;
}

/** Production: Date.now() and Node's timers. */
export class RealClock implements Clock {
  now(): number {
    return Date.now();
  }

  setTimer(ms: number, fn: () => void): TimerHandle {
    return nodeHandle(setTimeout(fn, timerDelay(ms)));
  }

  setRepeating(ms: number, fn: () => void): TimerHandle {
    return nodeHandle(setInterval(fn, timerDelay(ms)));
  }
}

function nodeHandle(t: NodeJS.Timeout): TimerHandle {
  const h: TimerHandle = {
    // clearTimeout clears intervals too.
    cancel: () => clearTimeout(t),
    unref: () => {
      t.unref();
      return h;
    },
  };
  return h;
}

/** The clock every component uses when none is given. */
export const realClock: Clock = new RealClock();

/**
 * Resolve after `ms` on `clock`, or at once when `signal` aborts (no
 * rejection: the caller checks the signal, as after any wait).
 */
export function sleep(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve();
      return;
    }
    const done = (): void => {
      timer.cancel();
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = clock.setTimer(ms, done);
    signal?.addEventListener('abort', done, { once: true });
  });
}
