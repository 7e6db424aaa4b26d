/**
 * A relay's upkeep on its clock: the onion key rotated on a schedule (the
 * retired key honoured for ONION_KEY_GRACE_S, so circuits being built from
 * the old descriptor still succeed) and the descriptor renewed at a third
 * of its lifetime, and at once after a rotation. The CLI constructs it; the
 * key files and the publication are ports, so a test runs days of it on a
 * VirtualClock.
 */
import {
  loadPreviousOnionKey,
  ONION_KEY_GRACE_S,
  onionKeyAgeS,
  rotateOnionKey,
  type Identity,
  type OnionKeyPair,
} from '../src/identity.js';
import { silentLogger, type Logger } from '../src/log.js';
import { realClock, type Clock, type TimerHandle } from '../src/time/clock.js';
import type { RelayNode } from './relay-node.js';

/** Where a relay's onion keys are kept. */
export interface OnionKeyStore {
  /** Age of the current onion key at `now` (ms). */
  currentAgeMs(now: number): number;
  /** Retire the current key, make a fresh one current (the identity is updated in place); the retired pair. */
  rotate(now: number): OnionKeyPair;
  /** The retired key and the end of its grace, if that is after `now`. */
  previous(now: number): (OnionKeyPair & { until: number }) | null;
}

/** The state directory's onion.key and onion.key.prev (src/identity.ts). */
export function fileOnionKeys(dir: string, identity: Identity): OnionKeyStore {
  return {
    currentAgeMs: (now) => onionKeyAgeS(dir, now) * 1000,
    rotate: () => rotateOnionKey(dir, identity),
    previous: (now) => loadPreviousOnionKey(dir, now),
  };
}

export interface RelayMaintenanceOptions {
  node: RelayNode;
  keys: OnionKeyStore;
  /** Rotate the onion key once it is this old. */
  rotateAfterMs: number;
  /** Renew the descriptor this often. */
  renewAfterMs: number;
  /** Sign and publish a fresh descriptor (at start, on renewal, after a rotation). */
  publish: () => void;
  clock?: Clock;
  log?: Logger;
}

/** How often the schedule is looked at (at most; less when renewals are more frequent). */
const CHECK_MS = 30_000;

export class RelayMaintenance {
  readonly counters = { rotations: 0, publications: 0 };
  private readonly clock: Clock;
  private readonly log: Logger;
  private timer: TimerHandle | null = null;
  private lastPublished = 0;

  constructor(private readonly o: RelayMaintenanceOptions) {
    this.clock = o.clock ?? realClock;
    this.log = o.log ?? silentLogger;
  }

  /** Rotate if due, take up a retired key still in its grace, publish; then on schedule. */
  start(): void {
    const now = this.clock.now();
    this.rotateIfDue(now);
    const previous = this.o.keys.previous(now);
    if (previous && !this.o.node.previousOnion) this.o.node.previousOnion = previous;
    this.publish(now);
    this.timer = this.clock.setRepeating(Math.min(this.o.renewAfterMs, CHECK_MS), () =>
      this.check(),
    );
  }

  stop(): void {
    this.timer?.cancel();
    this.timer = null;
  }

  check(): void {
    const now = this.clock.now();
    const rotated = this.rotateIfDue(now);
    if (rotated || now - this.lastPublished >= this.o.renewAfterMs) this.publish(now);
  }

  private rotateIfDue(now: number): boolean {
    if (this.o.keys.currentAgeMs(now) < this.o.rotateAfterMs) return false;
    const retired = this.o.keys.rotate(now);
    this.o.node.previousOnion = { ...retired, until: now + ONION_KEY_GRACE_S * 1000 };
    this.counters.rotations += 1;
    this.log.info(
      `rotated the onion key; the previous one is honoured for ${ONION_KEY_GRACE_S / 3600} h`,
    );
    return true;
  }

  private publish(now: number): void {
    this.lastPublished = now;
    this.counters.publications += 1;
    this.o.publish();
  }
}
