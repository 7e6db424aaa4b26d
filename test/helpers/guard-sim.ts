/**
 * A client's guard use on a virtual clock (ms), ticked like ClientNode
 * (CLIENT_TICK_MS): one circuit, one build at a time, link loss noticed
 * DEAD_PEER_AFTER_MS after the last datagram, a dial that fails after
 * STEP_TIMEOUT_MS. The guard logic sits behind a small adapter, so the same
 * scenario runs against guards.ts and against any other guard rule.
 */
export interface GuardAdapter {
  /** A guard to dial now, or a time to wait until. */
  choose(now: number, listed: string[]): { id: string; probe?: boolean } | { untilMs: number };
  onSuccess(id: string, now: number): void;
  onFailure(id: string, now: number): void;
  onAlive(id: string, at: number): void;
  /** A primary to retry with a bare link while the circuit runs through `current`. */
  dueRetry(now: number, listed: string[], current: string): string | null;
  sampled(): string[];
}

export interface SimWorld {
  /** Relays with a current descriptor at `now`. */
  listed(now: number): string[];
  /** Every datagram of the client is lost at `now` (its network is blocked). */
  blocked(now: number): boolean;
  /** Relay `id` does not answer at `now`. */
  down(id: string, now: number): boolean;
}

export interface SimResult {
  /** Every guard the client dialled (circuit or retry), in order of first dial. */
  dialled: string[];
  /** Time with a working circuit. */
  upMs: number;
  /** The guard of the circuit at the end. */
  current: string | null;
}

const TICK_MS = 250;
const DEAD_PEER_AFTER_MS = 10_000;
const DIAL_TIMEOUT_MS = 10_000;
const DIAL_RTT_MS = 100;

export function runGuardSim(
  g: GuardAdapter,
  world: SimWorld,
  fromMs: number,
  toMs: number,
  onTick?: (now: number, current: string | null) => void,
): SimResult {
  const dialled: string[] = [];
  const dialledSet = new Set<string>();
  const noteDial = (id: string) => {
    if (!dialledSet.has(id)) {
      dialledSet.add(id);
      dialled.push(id);
    }
  };
  let current: string | null = null;
  let lastHeard = 0;
  let dial: { id: string; doneAt: number; probe: boolean } | null = null;
  let retry: { id: string; doneAt: number } | null = null;
  let waitUntil = 0;
  let upMs = 0;
  const reachable = (id: string, t: number) => !world.blocked(t) && !world.down(id, t);
  // It answered if it could be reached when the handshake ended.
  const answered = (id: string, t: number) => reachable(id, t) && reachable(id, t - DIAL_RTT_MS);
  for (let t = fromMs; t < toMs; t += TICK_MS) {
    const listed = world.listed(t);
    if (current) {
      if (reachable(current, t)) {
        lastHeard = t;
        g.onAlive(current, t);
        upMs += TICK_MS;
      } else if (t - lastHeard > DEAD_PEER_AFTER_MS) {
        g.onFailure(current, t);
        current = null;
      }
    }
    if (dial && t >= dial.doneAt) {
      const d = dial;
      dial = null;
      if (answered(d.id, d.doneAt)) {
        g.onSuccess(d.id, t);
        // A probe's link only tells the guard logic the network works.
        if (!current && !d.probe) {
          current = d.id;
          lastHeard = t;
        }
      } else g.onFailure(d.id, t);
    }
    if (retry && t >= retry.doneAt) {
      const d = retry;
      retry = null;
      if (answered(d.id, d.doneAt)) g.onSuccess(d.id, t);
      else g.onFailure(d.id, t);
    }
    if (!current && !dial && t >= waitUntil) {
      const c = g.choose(t, listed);
      if ('id' in c) {
        noteDial(c.id);
        const ok = reachable(c.id, t);
        const doneAt = t + (ok ? DIAL_RTT_MS : DIAL_TIMEOUT_MS);
        dial = { id: c.id, doneAt, probe: c.probe === true };
      } else {
        waitUntil = Math.max(c.untilMs, t + 500);
      }
    }
    if (current && !retry) {
      const id = g.dueRetry(t, listed, current);
      if (id) {
        noteDial(id);
        retry = { id, doneAt: t + (reachable(id, t) ? DIAL_RTT_MS : DIAL_TIMEOUT_MS) };
      }
    }
    onTick?.(t, current);
  }
  return { dialled, upMs, current };
}
