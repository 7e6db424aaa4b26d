// The clock seam (src/time): the virtual clock's order, bounds and
// re-entrancy, checked against a slow, obviously-correct model; the real
// clock's handles.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RealClock, sleep } from '../../src/time/clock.js';
import { VirtualClock } from '../../src/time/virtual-clock.js';

test('timers fire by due time, and at one instant in the order they were set', () => {
  const c = new VirtualClock({ startMs: 0 });
  const got: string[] = [];
  c.setTimer(30, () => got.push('a30'));
  c.setTimer(10, () => got.push('b10'));
  c.setTimer(30, () => got.push('c30'));
  c.setTimer(20, () => got.push('d20'));
  c.setTimer(10, () => got.push('e10'));
  assert.equal(c.pending, 5);
  assert.equal(c.advance(29), 3);
  assert.deepEqual(got, ['b10', 'e10', 'd20']);
  assert.equal(c.now(), 29);
  c.advance(1);
  assert.deepEqual(got, ['b10', 'e10', 'd20', 'a30', 'c30']);
  assert.equal(c.pending, 0);
  assert.equal(c.nextDue(), null);
});

test('now() inside a callback is the timer due time; time never goes back', () => {
  const c = new VirtualClock({ startMs: 1000 });
  const seen: number[] = [];
  c.setTimer(250, () => seen.push(c.now()));
  c.setTimer(700, () => seen.push(c.now()));
  c.runUntil(5000);
  assert.deepEqual(seen, [1250, 1700]);
  assert.equal(c.now(), 5000);
  c.runUntil(10);
  assert.equal(c.now(), 5000, 'runUntil a past time leaves the time');
  assert.throws(() => c.advance(-1), RangeError);
});

test('timers set by timers are handled in the same run when they fall due within it', () => {
  const c = new VirtualClock({ startMs: 0 });
  const got: string[] = [];
  c.setTimer(10, () => {
    got.push(`outer@${c.now()}`);
    c.setTimer(5, () => {
      got.push(`inner@${c.now()}`);
      c.setTimer(100, () => got.push(`late@${c.now()}`));
    });
  });
  // A timer set earlier for the same instant as the inner one comes first.
  c.setTimer(15, () => got.push(`same@${c.now()}`));
  c.advance(50);
  assert.deepEqual(got, ['outer@10', 'same@15', 'inner@15']);
  assert.equal(c.nextDue(), 115);
  c.advance(65);
  assert.deepEqual(got.at(-1), 'late@115');
});

test('a repeating timer re-arms after its callback; cancel() inside it, or outside, stops it', () => {
  const c = new VirtualClock({ startMs: 0 });
  const ticks: number[] = [];
  const h = c.setRepeating(100, () => {
    ticks.push(c.now());
    if (ticks.length === 4) h.cancel();
  });
  c.advance(1000);
  assert.deepEqual(ticks, [100, 200, 300, 400]);
  assert.equal(c.pending, 0);
  const other: number[] = [];
  const g = c.setRepeating(250, () => other.push(c.now()));
  c.advance(600);
  g.cancel();
  g.cancel();
  c.advance(1000);
  assert.deepEqual(other, [1250, 1500]);
  assert.equal(c.pending, 0);
});

test('a repeating timer and a one-shot at the same instant keep the order they were set in', () => {
  const c = new VirtualClock({ startMs: 0 });
  const got: string[] = [];
  c.setRepeating(10, () => got.push(`r@${c.now()}`));
  c.setTimer(20, () => got.push(`t@${c.now()}`));
  c.advance(30);
  // At 20 the repeating timer was re-armed (at 10) after the one-shot was set.
  assert.deepEqual(got, ['r@10', 't@20', 'r@20', 'r@30']);
});

test('delays under 1 ms count as 1 ms; a storm is an error, not a hang', () => {
  const c = new VirtualClock({ startMs: 0, maxFiringsPerRun: 1000 });
  const at: number[] = [];
  c.setTimer(0, () => at.push(c.now()));
  c.setTimer(-5, () => at.push(c.now()));
  c.setTimer(NaN, () => at.push(c.now()));
  c.advance(0);
  assert.deepEqual(at, [], 'nothing is due at the instant it was set');
  c.advance(1);
  assert.deepEqual(at, [1, 1, 1]);
  c.setRepeating(0, () => {});
  assert.throws(() => c.advance(60_000), /timer storm/);
  // The clock stays usable: the storm stopped at the bound, time where it was.
  assert.equal(c.now(), 1001);
});

test('the number of live timers is bounded; cancelled ones do not count', () => {
  const c = new VirtualClock({ startMs: 0, maxTimers: 100 });
  const hs = Array.from({ length: 100 }, (_, i) => c.setTimer(1000 + i, () => {}));
  assert.throws(() => c.setTimer(1, () => {}), /more than 100 timers/);
  for (const h of hs.slice(0, 50)) h.cancel();
  c.setTimer(1, () => {});
  assert.equal(c.pending, 51);
  assert.equal(c.advance(2000), 51);
});

test('runUntil from inside a timer is refused (the run would reorder time)', () => {
  const c = new VirtualClock({ startMs: 0 });
  let err: unknown;
  c.setTimer(1, () => {
    try {
      c.advance(10);
    } catch (e) {
      err = e;
    }
  });
  c.advance(5);
  assert.match(String(err), /inside a timer/);
});

test('random set/cancel/advance sequences fire exactly as a sorted-list model says', () => {
  let s = 12345;
  const rnd = (n: number) => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s % n;
  };
  for (let round = 0; round < 40; round += 1) {
    const c = new VirtualClock({ startMs: 0 });
    // The model: every timer with its due time and set order; fire = sort and filter.
    interface M {
      id: number;
      due: number;
      order: number;
      every: number;
      live: boolean;
    }
    const model: M[] = [];
    let order = 0;
    let now = 0;
    const got: string[] = [];
    const want: string[] = [];
    const handles = new Map<number, { cancel(): void }>();
    const modelRun = (until: number) => {
      for (;;) {
        const due = model
          .filter((m) => m.live && m.due <= until)
          .sort((a, b) => a.due - b.due || a.order - b.order);
        const m = due[0];
        if (!m) break;
        now = m.due;
        want.push(`${m.id}@${now}`);
        if (m.every === 0) m.live = false;
        else {
          m.due += m.every;
          m.order = order++;
        }
      }
      now = Math.max(now, until);
    };
    for (let op = 0; op < 200; op += 1) {
      const k = rnd(10);
      if (k < 5) {
        const id = op;
        const ms = 1 + rnd(50);
        const every = k === 4 ? ms : 0;
        model.push({ id, due: now + ms, order: order++, every, live: true });
        const fn = () => got.push(`${id}@${c.now()}`);
        handles.set(id, every ? c.setRepeating(ms, fn) : c.setTimer(ms, fn));
      } else if (k < 7 && handles.size > 0) {
        const ids = [...handles.keys()];
        const id = ids[rnd(ids.length)] as number;
        handles.get(id)?.cancel();
        handles.delete(id);
        const m = model.find((x) => x.id === id);
        if (m) m.live = false;
      } else {
        const ms = rnd(40);
        modelRun(now + ms);
        c.advance(ms);
        assert.equal(c.now(), now);
      }
    }
    assert.deepEqual(got, want, `round ${round}`);
    assert.equal(c.pending, model.filter((m) => m.live).length);
  }
});

test('advanceAsync lets promise continuations run at the instant they belong to', async () => {
  const sync = new VirtualClock({ startMs: 0 });
  const run = async (c: VirtualClock, drive: (c: VirtualClock) => Promise<unknown>) => {
    const at: number[] = [];
    void (async () => {
      await sleep(c, 10);
      at.push(c.now());
      await sleep(c, 5);
      at.push(c.now());
    })();
    await drive(c);
    return at;
  };
  // Synchronous advance: the continuation after the first sleep runs after
  // advance() returned, at 40; its second sleep falls due at 45, inside the
  // next advance, whose continuation again runs only at its end, 80.
  const a = await run(sync, async (c) => {
    c.advance(40);
    await new Promise((r) => setImmediate(r));
    c.advance(40);
  });
  assert.deepEqual(a, [40, 80]);
  const b = await run(new VirtualClock({ startMs: 0 }), (c) => c.advanceAsync(40));
  assert.deepEqual(b, [10, 15]);
});

test('sleep ends early, without rejecting, when its signal aborts', async () => {
  const c = new VirtualClock({ startMs: 0 });
  const ac = new AbortController();
  let done = false;
  const p = sleep(c, 60_000, ac.signal).then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  assert.equal(done, false);
  ac.abort();
  await p;
  assert.equal(done, true);
  assert.equal(c.pending, 0, 'its timer was cancelled');
  await sleep(c, 1, ac.signal); // already aborted: at once
});

test('the real clock: timers fire, cancel stops them, unref returns the handle', async () => {
  const c = new RealClock();
  const t0 = c.now();
  assert.ok(Math.abs(t0 - Date.now()) < 1000);
  let fired = 0;
  const h = c.setTimer(5, () => (fired += 1));
  assert.equal(h.unref(), h);
  const cancelled = c.setTimer(5, () => (fired += 100));
  cancelled.cancel();
  let reps = 0;
  const r = c.setRepeating(2, () => {
    reps += 1;
    if (reps === 3) r.cancel();
  });
  await new Promise((res) => setTimeout(res, 60));
  assert.equal(fired, 1);
  assert.equal(reps, 3);
  assert.ok(c.now() >= t0 + 5);
});
