/**
 * A clock whose time the test sets by hand while its timers run on real
 * time: for tests that step time past a deadline and call a tick
 * themselves, with the rest of the node running as in production.
 */
import { realClock, type Clock } from '../../src/time/clock.js';

export function manualTime(now: () => number): Clock {
  return {
    now,
    setTimer: (ms, fn) => realClock.setTimer(ms, fn),
    setRepeating: (ms, fn) => realClock.setRepeating(ms, fn),
  };
}
