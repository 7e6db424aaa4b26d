/**
 * Guard churn (issue 9, hole 3) on a virtual clock. The attack: block the
 * client's UDP (every dial fails) for 30 s, 5 min or an hour, twenty times
 * each; on the old rule (a guard avoided 60 s, then a new one picked and the
 * oldest dropped) that replaced every guard. Here the sampled and primary
 * sets must come out unchanged, while a guard that is really down while
 * others work, or gone from the DHT, is replaced after the stated time,
 * and the sample stays bounded under churn and Sybil floods.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { GUARDS_FILE, loadGuardList, saveGuardList } from '../../client/guard-store.js';
import {
  GUARD_ALIVE_EVIDENCE_MS,
  GUARD_DOWN_REPLACE_AFTER_MS,
  GUARD_LIFETIME_MS,
  GUARD_RETRY_SCHEDULE_MS,
  GuardList,
  MAX_SAMPLED_GUARDS,
  N_PRIMARY_GUARDS,
  NETWORK_DOWN_RETRY_MAX_MS,
  NETWORK_DOWN_RETRY_MIN_MS,
  PRIMARY_GUARD_RETRY_SCHEDULE_MS,
  REMOVE_UNLISTED_GUARDS_AFTER_MS,
  retryIntervalMs,
} from '../../client/guards.js';
import { silentLogger } from '../../src/log.js';
import { runGuardSim, type GuardAdapter } from '../helpers/guard-sim.js';

const MIN = 60_000;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;
const T0 = 1_800_000_000_000;

const ids = (n: number, tag = 'a') =>
  Array.from({ length: n }, (_, i) => (tag + i.toString(16).padStart(5, '0')).padStart(64, '0'));

function seeded(seed = 7): (n: number) => number {
  let s = seed;
  return (n: number) => {
    s = (s * 48271) % 2147483647;
    return s % n;
  };
}

/** guards.ts behind the simulator's adapter (what selectPath and ClientNode do). */
function adapter(g: GuardList, rnd = seeded()): GuardAdapter {
  return {
    choose(now, listed) {
      g.update(
        listed.map((id) => ({ id, exit: false })),
        now,
        rnd,
      );
      const c = g.choose(new Set(listed), () => true, now);
      return c.kind === 'guard' ? { id: c.id, probe: c.role === 'probe' } : { untilMs: c.untilMs };
    },
    onSuccess: (id, now) => g.onSuccess(id, now),
    onFailure: (id, now) => g.onFailure(id, now),
    onAlive: (id, at) => g.onAlive(id, at),
    dueRetry(now, listed, current) {
      // ClientNode keeps the sample up to date while a circuit runs, too.
      g.update(
        listed.map((id) => ({ id, exit: false })),
        now,
        rnd,
      );
      return g.dueRetry(new Set(listed), current, now);
    },
    sampled: () => g.guards,
  };
}

/** Outages of `lengths`, each followed by `gapMs` of working network, from T0 + 1 min. */
function outages(
  lengths: number[],
  gapMs: number,
): { blocked: (t: number) => boolean; end: number } {
  const spans: Array<[number, number]> = [];
  let t = T0 + MIN;
  for (const len of lengths) {
    spans.push([t, t + len]);
    t += len + gapMs;
  }
  return { blocked: (x) => spans.some(([a, b]) => x >= a && x < b), end: t };
}

test('blocking all UDP for 30 s, 5 min and 1 h, twenty times each, replaces no guard', (t) => {
  const relays = ids(30);
  const g = new GuardList();
  const a = adapter(g);
  const lengths = [
    ...Array<number>(20).fill(30_000),
    ...Array<number>(20).fill(5 * MIN),
    ...Array<number>(20).fill(HOUR),
  ];
  const { blocked, end } = outages(lengths, 3 * MIN);
  const world = { listed: () => relays, blocked, down: () => false };
  // A first circuit, then the guard sets as they were before the attack.
  runGuardSim(a, { ...world, blocked: () => false }, T0, T0 + MIN);
  const sampledBefore = g.guards;
  const primariesBefore = g.primaries(new Set(relays));
  assert.equal(primariesBefore.length, N_PRIMARY_GUARDS);
  // After each outage: how long until a circuit runs again, and through whom.
  const back: Array<{ ms: number; primary: boolean }> = [];
  let wasBlocked = false;
  let outageEnd = 0;
  const r = runGuardSim(a, world, T0 + MIN, end, (t, current) => {
    const b = blocked(t);
    if (wasBlocked && !b) outageEnd = t;
    if (outageEnd && current) {
      back.push({ ms: t - outageEnd, primary: primariesBefore.includes(current) });
      outageEnd = 0;
    }
    wasBlocked = b;
  });
  assert.deepEqual(g.guards, sampledBefore, 'the sampled set is unchanged');
  assert.deepEqual(g.primaries(new Set(relays)), primariesBefore, 'the primaries are unchanged');
  assert.ok(r.current && primariesBefore.includes(r.current));
  assert.equal(back.length, lengths.length);
  assert.ok(
    back.every((x) => x.primary),
    'each time the circuit is back through a primary guard',
  );
  const worst = Math.max(...back.map((x) => x.ms));
  t.diagnostic(`circuit back at most ${worst} ms after an outage ends`);
  assert.ok(worst <= NETWORK_DOWN_RETRY_MAX_MS + 3 * 10_000, `back after ${worst} ms`);
  // Only sampled guards were ever dialled: no draw from the DHT (main's
  // rule dialled 14 distinct relays as guards over the 30 s outages and 27
  // over the 5 min ones, and kept none of its three guards).
  t.diagnostic(`distinct guards dialled: ${r.dialled.length}`);
  assert.ok(
    r.dialled.every((id) => sampledBefore.includes(id)),
    `dialled ${r.dialled.length}`,
  );
});

/**
 * The rule this replaces (main at 302afdd, client/path.ts and
 * client-node.ts), restated: a list of at most three guards; the first one
 * not avoided is used, else a new relay is drawn and the oldest dropped; a
 * guard whose dial fails or whose link is lost is avoided for 60 s; when
 * nothing is usable every avoid mark is forgotten.
 */
function oldRule(relays: string[], rnd: (n: number) => number): GuardAdapter {
  const guards: string[] = [];
  const avoid = new Map<string, number>();
  return {
    choose(now) {
      for (const [id, until] of avoid) if (until <= now) avoid.delete(id);
      const usable = relays.filter((r) => !avoid.has(r));
      if (usable.length === 0) {
        avoid.clear();
        return { untilMs: now + 500 };
      }
      let g = guards.find((x) => !avoid.has(x));
      if (!g) {
        g = usable[rnd(usable.length)] as string;
        guards.push(g);
        if (guards.length > 3) guards.shift();
      }
      return { id: g };
    },
    onSuccess: () => undefined,
    onFailure: (id, now) => void avoid.set(id, now + 60_000),
    onAlive: () => undefined,
    dueRetry: () => null,
    sampled: () => [...guards],
  };
}

test('under the old rule the same blocking draws new guards from the whole network', (t) => {
  const relays = ids(30);
  const a = oldRule(relays, seeded());
  const { blocked, end } = outages(Array<number>(20).fill(5 * MIN), 3 * MIN);
  runGuardSim(a, { listed: () => relays, blocked: () => false, down: () => false }, T0, T0 + MIN);
  const before = a.sampled();
  const r = runGuardSim(a, { listed: () => relays, blocked, down: () => false }, T0 + MIN, end);
  const fresh = a.sampled().filter((g) => !before.includes(g)).length;
  t.diagnostic(
    `old rule: ${fresh} of its ${a.sampled().length} guards are new, ${r.dialled.length} relays dialled`,
  );
  assert.ok(fresh >= 2, 'the old rule ends with new guards');
  assert.ok(r.dialled.length > 20, 'and dials most of the network as guards');
});

test('a guard that is down while the others work is replaced after GUARD_DOWN_REPLACE_AFTER_MS', () => {
  const relays = ids(30);
  const g = new GuardList();
  const a = adapter(g);
  runGuardSim(a, { listed: () => relays, blocked: () => false, down: () => false }, T0, T0 + MIN);
  const [p1, p2, p3] = g.primaries(new Set(relays)) as [string, string, string];
  const diesAt = T0 + MIN;
  const world = { listed: () => relays, blocked: () => false, down: (id: string) => id === p1 };
  // Service goes on through the second primary at once.
  let onP2At = 0;
  runGuardSim(a, world, diesAt, diesAt + GUARD_DOWN_REPLACE_AFTER_MS - HOUR, (t, cur) => {
    if (!onP2At && cur === p2) onP2At = t;
  });
  assert.ok(onP2At > 0 && onP2At - diesAt < 30_000, 'the second primary carries the circuit');
  assert.ok(g.guards.includes(p1), 'not replaced before the stated time');
  runGuardSim(
    a,
    world,
    diesAt + GUARD_DOWN_REPLACE_AFTER_MS - HOUR,
    diesAt + GUARD_DOWN_REPLACE_AFTER_MS + 3 * HOUR,
  );
  assert.ok(!g.guards.includes(p1), 'replaced after it');
  const now = g.primaries(new Set(relays));
  assert.deepEqual(now.slice(0, 2), [p2, p3]);
  assert.equal(now.length, N_PRIMARY_GUARDS);
  assert.ok(!now.includes(p1));
});

test('a guard gone from the DHT stops being primary at once and leaves the sample later', () => {
  const relays = ids(30);
  const g = new GuardList();
  const rnd = seeded(3);
  const cands = (list: string[]) => list.map((id) => ({ id, exit: false }));
  g.update(cands(relays), T0, rnd);
  const [p1, p2, p3] = g.primaries(new Set(relays)) as [string, string, string];
  const without = relays.filter((id) => id !== p1);
  let t = T0 + HOUR;
  g.update(cands(without), t, rnd);
  const c = g.choose(new Set(without), () => true, t);
  assert.deepEqual(c.kind === 'guard' && c.id, p2);
  assert.deepEqual(g.primaries(new Set(without)).slice(0, 2), [p2, p3]);
  // It comes back within the grace period: primary again, in its place.
  g.update(cands(relays), (t += DAY), rnd);
  assert.deepEqual(g.primaries(new Set(relays)), [p1, p2, p3]);
  // Gone for good: removed after REMOVE_UNLISTED_GUARDS_AFTER_MS.
  g.update(cands(without), (t += HOUR), rnd);
  g.update(cands(without), t + REMOVE_UNLISTED_GUARDS_AFTER_MS - 1, rnd);
  assert.ok(g.guards.includes(p1));
  g.update(cands(without), t + REMOVE_UNLISTED_GUARDS_AFTER_MS, rnd);
  assert.ok(!g.guards.includes(p1));
  assert.deepEqual(g.removals.at(-1), { id: p1, reason: 'unlisted' });
});

test('the sampled set stays bounded under churn and floods, and grows only when needed', () => {
  const g = new GuardList();
  const rnd = seeded(11);
  // A Sybil flood: 10,000 candidates add no more than needed.
  const flood = ids(10_000, 'f');
  g.update(
    flood.map((id) => ({ id, exit: false })),
    T0,
    rnd,
  );
  assert.equal(g.guards.length, N_PRIMARY_GUARDS + 1);
  // Churn: every hour the whole relay list is new, for 60 days.
  let max = 0;
  for (let h = 0; h < 60 * 24; h += 1) {
    const t = T0 + h * HOUR;
    const list = ids(50, `c${h.toString(16).padStart(4, '0')}`);
    g.update(
      list.map((id) => ({ id, exit: false })),
      t,
      rnd,
    );
    const c = g.choose(new Set(list), () => true, t);
    if (c.kind === 'guard') g.onSuccess(c.id, t);
    max = Math.max(max, g.guards.length);
  }
  assert.ok(max <= MAX_SAMPLED_GUARDS, `sampled set reached ${max}`);
  // Entries older than the lifetime never survive.
  assert.ok(GUARD_LIFETIME_MS > REMOVE_UNLISTED_GUARDS_AFTER_MS);
});

test('retry intervals follow the guard specification by how long a guard has been failing', () => {
  assert.equal(retryIntervalMs(0, true), 10 * MIN);
  assert.equal(retryIntervalMs(6 * HOUR, true), 90 * MIN);
  assert.equal(retryIntervalMs(4 * DAY, true), 4 * HOUR);
  assert.equal(retryIntervalMs(30 * DAY, true), 9 * HOUR);
  assert.equal(retryIntervalMs(0, false), HOUR);
  assert.equal(retryIntervalMs(5 * DAY, false), 18 * HOUR);
  assert.equal(retryIntervalMs(30 * DAY, false), 36 * HOUR);
});

test('the state persists (0600, atomically), a version 1 file is migrated, others discarded', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'guards-'));
  try {
    const old = ids(3, 'b');
    fs.writeFileSync(path.join(dir, GUARDS_FILE), JSON.stringify({ guards: old }));
    const notes: string[] = [];
    const log = { ...silentLogger, info: (m: string) => notes.push(m) };
    const g = loadGuardList(dir, T0, log);
    assert.deepEqual(g.guards, old);
    assert.match(notes.join('\n'), /migrated 3 guards from a version 1 file/);
    const file = path.join(dir, GUARDS_FILE);
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.equal((JSON.parse(fs.readFileSync(file, 'utf8')) as { version: number }).version, 2);
    g.update(
      ids(20).map((id) => ({ id, exit: false })),
      T0,
      seeded(),
    );
    saveGuardList(dir, g);
    assert.ok(!fs.existsSync(`${file}.tmp`));
    assert.deepEqual(loadGuardList(dir, T0, silentLogger).guards, g.guards);
    fs.writeFileSync(file, JSON.stringify({ version: 99, sampled: [] }));
    notes.length = 0;
    assert.deepEqual(loadGuardList(dir, T0, log).guards, []);
    assert.match(notes.join('\n'), /version 99: discarded/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('vector guard-state-v2: the constants of protocol section 7.9', () => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const doc = fs.readFileSync(path.resolve(here, '..', '..', '..', 'docs', 'protocol.md'), 'utf8');
  const m = /```vector guard-state-v2\n([\s\S]*?)```/.exec(doc);
  assert.ok(m?.[1], 'docs/protocol.md has vector guard-state-v2');
  const v: Record<string, string> = {};
  for (const line of m[1].trim().split('\n')) {
    const i = line.indexOf(':');
    v[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  const n = (k: string) => Number(v[k]);
  assert.equal(n('n_primary_guards'), N_PRIMARY_GUARDS);
  assert.equal(n('max_sampled_guards'), MAX_SAMPLED_GUARDS);
  assert.equal(n('guard_lifetime_ms'), GUARD_LIFETIME_MS);
  assert.equal(n('remove_unlisted_guards_after_ms'), REMOVE_UNLISTED_GUARDS_AFTER_MS);
  assert.equal(n('guard_down_replace_after_ms'), GUARD_DOWN_REPLACE_AFTER_MS);
  assert.equal(n('guard_alive_evidence_ms'), GUARD_ALIVE_EVIDENCE_MS);
  assert.equal(n('network_down_retry_min_ms'), NETWORK_DOWN_RETRY_MIN_MS);
  assert.equal(n('network_down_retry_max_ms'), NETWORK_DOWN_RETRY_MAX_MS);
  const schedule = (text: string | undefined) =>
    (text ?? '').split(' ').map((pair) => {
      const [below, every] = pair.split(':');
      return [below === 'inf' ? Infinity : Number(below), Number(every)];
    });
  assert.deepEqual(schedule(v.primary_retry_ms), PRIMARY_GUARD_RETRY_SCHEDULE_MS);
  assert.deepEqual(schedule(v.other_retry_ms), GUARD_RETRY_SCHEDULE_MS);
});
