// A relay's upkeep (relay/maintenance.ts) over days of virtual time, with
// the real relay answering CREATEs over the in-memory network: the onion
// key rotates on schedule, the retired key opens circuits for its 24 h of
// grace and not after, and the descriptor is renewed on schedule and at
// once after a rotation.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, test } from 'node:test';
import { RelayMaintenance, type OnionKeyStore } from '../../relay/maintenance.js';
import { RelayNode } from '../../relay/relay-node.js';
import { DestroyReason } from '../../src/circuit/cells.js';
import {
  ephemeralIdentity,
  ONION_KEY_GRACE_S,
  x25519Public,
  type Identity,
  type OnionKeyPair,
} from '../../src/identity.js';
import { MemoryNetwork } from '../../src/link/transport.js';
import { VirtualClock } from '../../src/time/virtual-clock.js';
import { RawClient, type RelayRef } from '../helpers/raw-circuit.js';

const stops: (() => void)[] = [];
after(() => stops.forEach((s) => s()));

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** The key files' behaviour, in memory. */
class MemoryOnionKeys implements OnionKeyStore {
  private bornAt: number;
  private retired: (OnionKeyPair & { until: number }) | null = null;
  constructor(
    private readonly identity: Identity,
    now: number,
  ) {
    this.bornAt = now;
  }
  currentAgeMs(now: number): number {
    return now - this.bornAt;
  }
  rotate(now: number): OnionKeyPair {
    const old = { secret: this.identity.onionSecret, public: this.identity.onionPublic };
    const secret = randomBytes(32);
    this.identity.onionSecret = secret;
    this.identity.onionPublic = x25519Public(secret);
    this.bornAt = now;
    this.retired = { ...old, until: now + ONION_KEY_GRACE_S * 1000 };
    return old;
  }
  previous(now: number): (OnionKeyPair & { until: number }) | null {
    return this.retired && now < this.retired.until ? this.retired : null;
  }
}

async function until(clock: VirtualClock, what: string, cond: () => boolean, maxMs: number) {
  const start = clock.now();
  while (!cond()) {
    if (clock.now() - start > maxMs) assert.fail(`${what}: not within ${maxMs} ms`);
    await clock.advanceAsync(5);
  }
}

async function settled<T>(clock: VirtualClock, p: Promise<T>): Promise<T> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  await until(clock, 'answer', () => done, 10_000);
  return p;
}

test('the onion key rotates on schedule; the old key opens circuits for 24 h, then not', async () => {
  const clock = new VirtualClock();
  const net = new MemoryNetwork({ clock, latencyMs: () => 2 });
  const identity = ephemeralIdentity();
  const node = new RelayNode({
    identity,
    transport: net.transport('10.1.0.2', 7000),
    clock,
    allowPrivateExtend: true,
  });
  await node.start();
  stops.push(() => node.stop());
  // A key made a week ago, less two minutes.
  const keys = new MemoryOnionKeys(identity, clock.now() - 7 * DAY + 120_000);
  const published: number[] = [];
  const m = new RelayMaintenance({
    node,
    keys,
    rotateAfterMs: 7 * DAY,
    renewAfterMs: 20 * 60_000,
    publish: () => published.push(clock.now()),
    clock,
  });
  m.start();
  stops.push(() => m.stop());
  const raw = new RawClient(net, '10.9.0.2', 40000, clock);
  await raw.start();
  stops.push(() => raw.stop());
  const ref = (onionKey: Buffer): RelayRef => ({
    id: identity.id,
    publicKey: identity.publicKey,
    onionKey,
    host: '10.1.0.2',
    port: 7000,
  });
  const first = Buffer.from(identity.onionPublic);
  const peer = await settled(clock, raw.link(ref(first)));
  const create = async (key: Buffer) => (await settled(clock, raw.create(peer, ref(key), 1)))[1];
  assert.equal((await create(first)).kind, 'ok');

  // Just before it is a week old: no rotation yet (the check runs every 30 s).
  await clock.advanceAsync(60_000);
  assert.equal(m.counters.rotations, 0);
  assert.ok(identity.onionPublic.equals(first));
  await clock.advanceAsync(60_000);
  assert.equal(m.counters.rotations, 1);
  const rotatedAt = published[published.length - 1] as number;
  assert.ok(rotatedAt >= clock.now() - 30_000, 'published at once after the rotation');
  const second = Buffer.from(identity.onionPublic);
  assert.ok(!second.equals(first));
  // Both keys open circuits during the grace.
  assert.equal((await create(second)).kind, 'ok');
  assert.equal((await create(first)).kind, 'ok');
  // A day without this client (its link closed): time runs without a
  // turn of the event loop per instant, nothing here awaits.
  raw.stop();
  clock.advance(rotatedAt + ONION_KEY_GRACE_S * 1000 - 60_000 - clock.now());
  const raw2 = new RawClient(net, '10.9.0.2', 40001, clock);
  await raw2.start();
  stops.push(() => raw2.stop());
  const peer2 = await settled(clock, raw2.link(ref(first)));
  const create2 = async (key: Buffer) => (await settled(clock, raw2.create(peer2, ref(key), 1)))[1];
  await clock.advanceAsync(rotatedAt + ONION_KEY_GRACE_S * 1000 - 1000 - clock.now());
  assert.equal((await create2(first)).kind, 'ok', 'the old key refused within its grace');
  await clock.advanceAsync(2000);
  const late = await create2(first);
  assert.deepEqual(late, { kind: 'destroyed', reason: DestroyReason.badKey });
  assert.equal((await create2(second)).kind, 'ok');

  // Renewals: every 20 minutes, never more than 30 s late, and one after the rotation.
  const gaps = published.slice(1).map((t, i) => t - (published[i] as number));
  assert.ok(published.length >= DAY / (20 * 60_000), `${published.length} publications`);
  assert.ok(
    gaps.every((g) => g <= 20 * 60_000 + 30_000),
    `longest gap ${Math.max(...gaps)} ms`,
  );
});

test('a restarted relay takes up its retired key while the grace lasts', async () => {
  const clock = new VirtualClock();
  const net = new MemoryNetwork({ clock });
  const identity = ephemeralIdentity();
  const node = new RelayNode({ identity, transport: net.transport('10.1.0.3', 7000), clock });
  await node.start();
  stops.push(() => node.stop());
  const keys = new MemoryOnionKeys(identity, clock.now() - 8 * DAY);
  // Rotated by the run before: the store has a retired key with 2 h of grace left.
  keys.rotate(clock.now() - 22 * HOUR);
  const before = Buffer.from(identity.onionPublic);
  const m = new RelayMaintenance({
    node,
    keys,
    rotateAfterMs: 7 * DAY,
    renewAfterMs: HOUR,
    publish: () => undefined,
    clock,
  });
  m.start();
  stops.push(() => m.stop());
  assert.equal(m.counters.rotations, 0, 'the current key is only 22 h old');
  assert.ok(identity.onionPublic.equals(before));
  assert.ok(node.previousOnion, 'the retired key is honoured');
  assert.equal(node.previousOnion.until, clock.now() + 2 * HOUR);
});
