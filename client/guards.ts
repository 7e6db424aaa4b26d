/**
 * Entry guards: a pure state machine after Tor's guard specification
 * (proposal 271, guard-spec), scaled to this network.
 *
 * - SAMPLED: a persistent, bounded set (MAX_SAMPLED_GUARDS) of relays drawn
 *   from the relay list only when needed: when fewer than
 *   N_PRIMARY_GUARDS + 1 of its entries are listed and not known to be down.
 *   Each entry records when it was added and leaves after
 *   GUARD_LIFETIME_MS, after REMOVE_UNLISTED_GUARDS_AFTER_MS without a
 *   current descriptor, or after GUARD_DOWN_REPLACE_AFTER_MS of failures
 *   confirmed while another guard worked. Nothing else removes an entry.
 * - PRIMARY: the first N_PRIMARY_GUARDS listed entries of the sample, in
 *   the order they were sampled. A circuit uses the first primary guard
 *   that fits its path and is not waiting for a retry.
 * - Retry: a failed guard is tried again on Tor's schedule, by how long it
 *   has been failing (primary: every 10 min for 6 h, 90 min until 4 days,
 *   4 h until 7 days, then 9 h; others 1 h, 4 h, 18 h, 36 h).
 * - Network down: when every primary guard has failed since the last
 *   success with any guard, and one probe of another sampled guard fails
 *   too, the network is taken to be down. Nothing is marked against any
 *   guard for that: the client waits (NETWORK_DOWN_RETRY_MIN_MS doubling to
 *   NETWORK_DOWN_RETRY_MAX_MS) and retries the primaries in order.
 * - A failure counts against a guard ("confirmed") only if another guard
 *   was heard from within GUARD_ALIVE_EVIDENCE_MS of it: a client whose own
 *   network is blocked hears nobody, so blocking it never removes a guard.
 *
 * Every method takes `now` (ms); nothing here does I/O or reads a clock.
 * `toJSON()`/`fromJSON()` give the persisted form (guard-store.ts writes it).
 */

const MINUTE_MS = 60_000;
const HOUR_MS = 60 * MINUTE_MS;
const DAY_MS = 24 * HOUR_MS;

export const N_PRIMARY_GUARDS = 3;
/** Bound on the sampled set (Tor: 20 % of the guards, at most 60; this network is smaller). */
export const MAX_SAMPLED_GUARDS = 12;
/** A sampled guard leaves after this long (Tor's GUARD_LIFETIME). */
export const GUARD_LIFETIME_MS = 120 * DAY_MS;
/** A sampled guard with no current descriptor for this long leaves (Tor: 20 days). */
export const REMOVE_UNLISTED_GUARDS_AFTER_MS = 20 * DAY_MS;
/**
 * A guard whose failures were confirmed (another guard reachable) over this
 * span, with no success between, leaves the sample. Tor has no such rule
 * (its consensus drops dead relays); here a relay that keeps publishing but
 * never answers this client would otherwise hold a primary slot for ever.
 */
export const GUARD_DOWN_REPLACE_AFTER_MS = DAY_MS;
/** A failure is confirmed if another guard was heard from within this of it. */
export const GUARD_ALIVE_EVIDENCE_MS = 5_000;
/** Waits between rounds of retrying the primaries while the network is down. */
export const NETWORK_DOWN_RETRY_MIN_MS = 5_000;
export const NETWORK_DOWN_RETRY_MAX_MS = 30_000;

/** [failing for less than, retry every] (guard-spec appendix A.1). */
export const PRIMARY_GUARD_RETRY_SCHEDULE_MS: ReadonlyArray<readonly [number, number]> = [
  [6 * HOUR_MS, 10 * MINUTE_MS],
  [4 * DAY_MS, 90 * MINUTE_MS],
  [7 * DAY_MS, 4 * HOUR_MS],
  [Infinity, 9 * HOUR_MS],
];
export const GUARD_RETRY_SCHEDULE_MS: ReadonlyArray<readonly [number, number]> = [
  [6 * HOUR_MS, HOUR_MS],
  [4 * DAY_MS, 4 * HOUR_MS],
  [7 * DAY_MS, 18 * HOUR_MS],
  [Infinity, 36 * HOUR_MS],
];

export const GUARD_STATE_VERSION = 2;

export function retryIntervalMs(failingForMs: number, primary: boolean): number {
  const schedule = primary ? PRIMARY_GUARD_RETRY_SCHEDULE_MS : GUARD_RETRY_SCHEDULE_MS;
  for (const [below, every] of schedule) if (failingForMs < below) return every;
  return (schedule[schedule.length - 1] as readonly [number, number])[1];
}

interface Entry {
  id: string;
  /** Persisted. When it joined the sample (back-dated at random by up to a tenth of the lifetime). */
  addedAt: number;
  /** Persisted. Since when no current descriptor lists it (null: listed). */
  unlistedSince: number | null;
  /** Persisted. First confirmed failure of the current failing streak. */
  downSince: number | null;
  /** Persisted. Latest confirmed failure of the streak. */
  lastConfirmedDownAt: number | null;
  // Not persisted: reachability of this run.
  failingSince: number | null;
  lastAttemptAt: number;
  lastFailureAt: number;
  lastAliveAt: number;
}

export type GuardChoice =
  | { kind: 'guard'; id: string; role: 'primary' | 'probe' | 'fallback' }
  | { kind: 'wait'; untilMs: number; reason: string };

export interface GuardRemoval {
  id: string;
  reason: 'lifetime' | 'unlisted' | 'unreachable';
}

export interface GuardCandidate {
  id: string;
  /** Exits are sampled only if nothing else is. */
  exit: boolean;
}

function entry(id: string, addedAt: number): Entry {
  return {
    id,
    addedAt,
    unlistedSince: null,
    downSince: null,
    lastConfirmedDownAt: null,
    failingSince: null,
    lastAttemptAt: -Infinity,
    lastFailureAt: -Infinity,
    lastAliveAt: -Infinity,
  };
}

const ID_RE = /^[0-9a-f]{64}$/;

export class GuardList {
  private sampled: Entry[] = [];
  private lastSuccessAt = -Infinity;
  /** Network-down state: set while every primary failed since the last success. */
  private downRound: {
    /** The current round's tries ended: wait until retryAt. */
    waiting: boolean;
    retryAt: number;
    delayMs: number;
    startedAt: number;
    probed: boolean;
  } | null = null;
  /** Primaries tried before this are retriable once (after the network came back). */
  private retryPrimariesFrom = -Infinity;
  /** Set by anything that changes the persisted form. */
  dirty = false;
  readonly removals: GuardRemoval[] = [];

  /** Ids in sample order (status output, tests). */
  get guards(): string[] {
    return this.sampled.map((e) => e.id);
  }

  /** The primary guards given which relays are listed now. */
  primaries(listed: ReadonlySet<string>): string[] {
    return this.primaryEntries(listed).map((e) => e.id);
  }

  get networkDown(): boolean {
    return this.downRound !== null;
  }

  private primaryEntries(listed: ReadonlySet<string>): Entry[] {
    const out: Entry[] = [];
    for (const e of this.sampled) {
      if (out.length >= N_PRIMARY_GUARDS) break;
      if (listed.has(e.id)) out.push(e);
    }
    return out;
  }

  private find(id: string): Entry | undefined {
    return this.sampled.find((e) => e.id === id);
  }

  /**
   * Bring listing marks up to date, drop what expired, and sample more
   * relays if fewer than N_PRIMARY_GUARDS + 1 usable entries remain.
   * `candidates` are the relays that may serve as a guard now.
   */
  update(candidates: GuardCandidate[], now: number, rnd: (n: number) => number): void {
    const listed = new Set(candidates.map((c) => c.id));
    for (const e of this.sampled) {
      if (listed.has(e.id)) {
        if (e.unlistedSince !== null) this.change(() => (e.unlistedSince = null));
      } else if (e.unlistedSince === null) {
        this.change(() => (e.unlistedSince = now));
      }
    }
    const keep: Entry[] = [];
    for (const e of this.sampled) {
      let reason: GuardRemoval['reason'] | null = null;
      if (now - e.addedAt >= GUARD_LIFETIME_MS) reason = 'lifetime';
      else if (e.unlistedSince !== null && now - e.unlistedSince >= REMOVE_UNLISTED_GUARDS_AFTER_MS)
        reason = 'unlisted';
      else if (
        e.downSince !== null &&
        e.lastConfirmedDownAt !== null &&
        e.lastConfirmedDownAt - e.downSince >= GUARD_DOWN_REPLACE_AFTER_MS
      )
        reason = 'unreachable';
      if (reason) {
        this.removals.push({ id: e.id, reason });
        if (this.removals.length > MAX_SAMPLED_GUARDS) this.removals.shift();
        this.dirty = true;
      } else keep.push(e);
    }
    this.sampled = keep;
    // Expand only when needed, and never while the network is down: a
    // client that cannot reach anyone must not draw new guards.
    if (this.downRound) return;
    const usable = () =>
      this.sampled.filter((e) => listed.has(e.id) && e.downSince === null).length;
    while (usable() < N_PRIMARY_GUARDS + 1 && this.sampled.length < MAX_SAMPLED_GUARDS) {
      const fresh = candidates.filter((c) => !this.find(c.id));
      if (fresh.length === 0) break;
      const nonExit = fresh.filter((c) => !c.exit);
      const pool = nonExit.length > 0 ? nonExit : fresh;
      const pick = pool[rnd(pool.length)] as GuardCandidate;
      // Back-dated like Tor's RAND_TIME, so the file does not tell when it joined.
      const back = rnd(Math.floor(GUARD_LIFETIME_MS / 10 / 1000)) * 1000;
      this.sampled.push(entry(pick.id, now - back));
      this.dirty = true;
    }
  }

  private change(f: () => void): void {
    f();
    this.dirty = true;
  }

  private retriable(e: Entry, now: number, primary: boolean): boolean {
    if (e.failingSince === null) return true;
    if (primary && e.lastAttemptAt < this.retryPrimariesFrom) return true;
    return now - e.lastAttemptAt >= retryIntervalMs(now - e.failingSince, primary);
  }

  /**
   * The guard for the next circuit. `fits` says whether a guard suits the
   * path (not the exit, not in its /16). Call update() first. Choosing a
   * guard counts as an attempt: report its outcome with onSuccess/onFailure.
   */
  choose(listedIds: ReadonlySet<string>, fits: (id: string) => boolean, now: number): GuardChoice {
    const prim = this.primaryEntries(listedIds);
    if (this.downRound?.waiting && now >= this.downRound.retryAt) {
      // A new round: every primary may be tried once more, and one probe.
      const r = this.downRound;
      r.waiting = false;
      r.startedAt = now;
      r.probed = false;
    }
    for (const e of prim) {
      if (!fits(e.id)) continue;
      const ok = this.downRound
        ? e.lastAttemptAt < this.downRound.startedAt
        : this.retriable(e, now, true);
      if (ok) return this.attempt(e, 'primary', now);
    }
    const failedSinceSuccess = (e: Entry) =>
      e.failingSince !== null && e.lastFailureAt >= this.lastSuccessAt;
    const othersAlive = this.sampled.some((e) => now - e.lastAliveAt <= GUARD_ALIVE_EVIDENCE_MS);
    const allPrimariesFailed = prim.length > 0 && prim.every(failedSinceSuccess) && !othersAlive;
    const rest = this.sampled.filter((e) => listedIds.has(e.id) && !prim.includes(e) && fits(e.id));
    if (allPrimariesFailed) {
      // Is it them or us? One probe of another sampled guard per round.
      if (!this.downRound || !this.downRound.probed) {
        const probe = rest.find((e) => e.downSince === null) ?? rest[0];
        if (probe) {
          if (this.downRound) this.downRound.probed = true;
          else this.pendingProbe = true;
          return this.attempt(probe, 'probe', now);
        }
      }
      this.enterNetworkDown(now);
      const r = this.downRound as unknown as NonNullable<GuardList['downRound']>;
      if (!r.waiting) {
        // The round's tries all failed: wait, longer each round.
        r.waiting = true;
        r.retryAt = now + r.delayMs;
        r.delayMs = Math.min(r.delayMs * 2, NETWORK_DOWN_RETRY_MAX_MS);
      }
      return {
        kind: 'wait',
        untilMs: r.retryAt,
        reason: 'every primary guard failed and no other guard answered: the network looks down',
      };
    }
    // The network works but the primaries cannot serve this path now.
    for (const e of rest)
      if (this.retriable(e, now, false)) return this.attempt(e, 'fallback', now);
    let next = Infinity;
    for (const e of [...prim, ...rest]) {
      if (e.failingSince === null) continue;
      const primary = prim.includes(e);
      next = Math.min(next, e.lastAttemptAt + retryIntervalMs(now - e.failingSince, primary));
    }
    return {
      kind: 'wait',
      untilMs: Number.isFinite(next) ? next : now + NETWORK_DOWN_RETRY_MIN_MS,
      reason: 'no sampled guard fits this path and is due for a try',
    };
  }

  /** A probe outside a down round (the first one) ends that way too. */
  private pendingProbe = false;

  private enterNetworkDown(now: number): void {
    this.pendingProbe = false;
    if (this.downRound) return;
    this.downRound = {
      waiting: false,
      retryAt: now,
      delayMs: NETWORK_DOWN_RETRY_MIN_MS,
      // The tries that led here were this round's.
      startedAt: Infinity,
      probed: true,
    };
  }

  private attempt(e: Entry, role: 'primary' | 'probe' | 'fallback', now: number): GuardChoice {
    e.lastAttemptAt = now;
    this.probeId = role === 'probe' ? e.id : null;
    this.lastRole = role;
    return { kind: 'guard', id: e.id, role };
  }

  /** What the last choice was for (a probe's link carries no circuit). */
  lastRole: 'primary' | 'probe' | 'fallback' = 'primary';
  /** The guard last chosen as a probe: a success only says the network works. */
  private probeId: string | null = null;

  /**
   * A primary ahead of `currentId` whose retry time has come, to try with a
   * bare link while the circuit runs through a later guard (so a primary's
   * failures keep being confirmed, and a recovered one is used again).
   */
  dueRetry(listedIds: ReadonlySet<string>, currentId: string | null, now: number): string | null {
    if (this.downRound) return null;
    for (const e of this.primaryEntries(listedIds)) {
      if (e.id === currentId) return null;
      if (e.failingSince !== null && this.retriable(e, now, true)) {
        e.lastAttemptAt = now;
        return e.id;
      }
    }
    return null;
  }

  /** The link to `id` came up, or a circuit through it was built. */
  onSuccess(id: string, now: number): void {
    this.lastSuccessAt = now;
    this.pendingProbe = false;
    if (id === this.probeId) {
      // Another guard answers, so the network works: try the primaries
      // again at once before any circuit uses the probe.
      this.probeId = null;
      this.retryPrimariesFrom = now;
    }
    if (this.downRound) {
      // The network is back: the primaries' failures were ours, so each
      // may be tried again at once.
      this.downRound = null;
      this.retryPrimariesFrom = now;
    }
    const e = this.find(id);
    if (!e) return;
    e.failingSince = null;
    e.lastAliveAt = Math.max(e.lastAliveAt, now);
    if (e.downSince !== null || e.lastConfirmedDownAt !== null) {
      e.downSince = null;
      e.lastConfirmedDownAt = null;
      this.dirty = true;
    }
  }

  /** Something authentic was heard from guard `id` at `at` (its link is up). */
  onAlive(id: string, at: number): void {
    const e = this.find(id);
    if (e && at > e.lastAliveAt) e.lastAliveAt = at;
  }

  /** A dial to `id` failed, or its link or circuit was lost. */
  onFailure(id: string, now: number): void {
    const e = this.find(id);
    if (e) {
      e.failingSince ??= now;
      e.lastFailureAt = now;
      const confirmed = this.sampled.some(
        (o) => o !== e && now - o.lastAliveAt <= GUARD_ALIVE_EVIDENCE_MS,
      );
      if (confirmed) {
        e.downSince ??= now;
        e.lastConfirmedDownAt = now;
        this.dirty = true;
      }
    }
    if (this.pendingProbe) this.enterNetworkDown(now);
  }

  toJSON(): object {
    return {
      version: GUARD_STATE_VERSION,
      sampled: this.sampled.map((e) => ({
        id: e.id,
        addedAt: e.addedAt,
        unlistedSince: e.unlistedSince,
        downSince: e.downSince,
        lastConfirmedDownAt: e.lastConfirmedDownAt,
      })),
    };
  }

  /**
   * The state from its persisted form. A version 1 file (`{ guards: [ids] }`,
   * the old three-entry list) is migrated: its guards become the first
   * sampled entries, added `now`. Anything else yields an empty state and a
   * note saying why.
   */
  static fromJSON(doc: unknown, now: number): { list: GuardList; note: string | null } {
    const list = new GuardList();
    if (typeof doc !== 'object' || doc === null) return { list, note: 'not a JSON object' };
    const d = doc as { version?: unknown; guards?: unknown; sampled?: unknown };
    const num = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
    const opt = (v: unknown): number | null => (num(v) ? v : null);
    if (d.version === undefined && Array.isArray(d.guards)) {
      for (const g of d.guards.slice(0, N_PRIMARY_GUARDS)) {
        if (typeof g === 'string' && ID_RE.test(g) && !list.find(g))
          list.sampled.push(entry(g, now));
      }
      list.dirty = true;
      return { list, note: `migrated ${list.sampled.length} guards from a version 1 file` };
    }
    if (d.version !== GUARD_STATE_VERSION || !Array.isArray(d.sampled)) {
      return { list, note: `unknown guard state version ${String(d.version)}: discarded` };
    }
    for (const raw of d.sampled.slice(0, MAX_SAMPLED_GUARDS)) {
      const r = raw as Record<string, unknown>;
      if (typeof r?.id !== 'string' || !ID_RE.test(r.id) || !num(r.addedAt) || list.find(r.id))
        continue;
      const e = entry(r.id, Math.min(r.addedAt, now));
      e.unlistedSince = opt(r.unlistedSince);
      e.downSince = opt(r.downSince);
      e.lastConfirmedDownAt = opt(r.lastConfirmedDownAt);
      list.sampled.push(e);
    }
    return { list, note: null };
  }
}
