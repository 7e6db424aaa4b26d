// The node's timers on the virtual clock: the real relay, client, exit and
// link code over a MemoryNetwork that delivers on the same clock, so that
// minutes of protocol time (the 180 s idle expiry, dead-peer detection,
// build-step timeouts, lease expiry) pass in milliseconds of test time,
// and each deadline is checked on both sides: not before, but by then.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { ClientNode } from '../../client/client-node.js';
import { CIRCUIT_IDLE_MS, RELAY_TICK_MS, RelayNode } from '../../relay/relay-node.js';
import { ntorClientStatesLive } from '../../src/crypto/ntor.js';
import { ephemeralIdentity } from '../../src/identity.js';
import { DEAD_PEER_AFTER_MS, LINK_TICK_MS } from '../../src/link/constants.js';
import { LinkEndpoint } from '../../src/link/endpoint.js';
import { MemoryNetwork } from '../../src/link/transport.js';
import { MemoryDevice } from '../../src/tun/device.js';
import { VirtualClock } from '../../src/time/virtual-clock.js';
import { startNode, stopNode, type SimNode } from '../../simulations/world.js';
import { RawClient, type RelayRef } from '../helpers/raw-circuit.js';

const stops: (() => void)[] = [];
after(() => stops.forEach((s) => s()));

function world(latencyMs = 2): { clock: VirtualClock; net: MemoryNetwork } {
  const clock = new VirtualClock();
  const net = new MemoryNetwork({ clock, latencyMs: () => latencyMs });
  return { clock, net };
}

/** Move virtual time in steps until `cond` holds; fails after `maxMs` of it. */
async function until(
  clock: VirtualClock,
  what: string,
  cond: () => boolean,
  maxMs: number,
  stepMs = 5,
): Promise<number> {
  const start = clock.now();
  while (!cond()) {
    if (clock.now() - start > maxMs) assert.fail(`${what}: not within ${maxMs} ms of virtual time`);
    await clock.advanceAsync(stepMs);
  }
  return clock.now() - start;
}

/** Move virtual time until `p` settles (its waits are on the clock too). */
async function settled<T>(
  clock: VirtualClock,
  what: string,
  p: Promise<T>,
  maxMs: number,
): Promise<T> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  await until(clock, what, () => done, maxMs);
  return p;
}

async function relayAt(clock: VirtualClock, net: MemoryNetwork, k: number, exit = false) {
  const n = await startNode(net, k, 4, exit, null, clock);
  stops.push(() => stopNode(n));
  return n;
}

function ref(n: SimNode): RelayRef {
  return {
    id: n.id,
    publicKey: n.desc.publicKey,
    onionKey: n.desc.onionKey,
    host: n.host,
    port: 7000,
  };
}

test('a silent circuit lives 180 s at its relay, then is closed; the link stays up', async () => {
  const { clock, net } = world();
  const r = await relayAt(clock, net, 0);
  const raw = new RawClient(net, '10.9.0.2', 40000, clock);
  await raw.start();
  stops.push(() => raw.stop());
  const peer = await settled(clock, 'link up', raw.link(ref(r)), 5000);
  const [, answer] = await settled(clock, 'CREATED', raw.create(peer, ref(r), 1), 5000);
  assert.equal(answer.kind, 'ok');
  assert.equal(r.node.circuits, 1);
  const lastCell = clock.now();

  // Silence from the client on this circuit; link keepalives keep going.
  await clock.advanceAsync(CIRCUIT_IDLE_MS - RELAY_TICK_MS - 100);
  assert.equal(r.node.circuits, 1, 'closed before its idle time');
  await until(clock, 'idle close', () => r.node.circuits === 0, 2 * RELAY_TICK_MS + 200);
  const idle = clock.now() - lastCell;
  assert.ok(
    idle >= CIRCUIT_IDLE_MS && idle <= CIRCUIT_IDLE_MS + 2 * RELAY_TICK_MS + 100,
    `${idle} ms`,
  );
  assert.equal(r.node.counters.circuitsClosed, 1);
  assert.equal(raw.endpoint.upPeers().length, 1, 'the link outlived the circuit');
  assert.equal(peer.state, 'up');
});

test('a peer that goes silent is declared dead after 10 s, not before, and dialled again', async () => {
  const { clock, net } = world();
  const listenerId = ephemeralIdentity();
  const down: string[] = [];
  const listener = new LinkEndpoint({
    identity: listenerId,
    transport: net.transport('10.0.4.1', 7000),
    listen: { allowedIds: null },
    clock,
  });
  const dialer = new LinkEndpoint({
    identity: ephemeralIdentity(),
    transport: net.transport('10.0.4.2', 40000),
    onPeerDown: (_p, reason) => down.push(reason),
    clock,
  });
  stops.push(() => dialer.stop());
  await listener.start();
  await dialer.start();
  dialer.dial('10.0.4.1', 7000, listenerId.id);
  await until(clock, 'up', () => dialer.upPeers().length === 1, 5000);
  // Ten idle minutes: keepalives hold the link.
  await clock.advanceAsync(600_000);
  assert.equal(dialer.upPeers().length, 1);
  assert.deepEqual(down, []);
  // The listener's host vanishes: no CLOSE, nothing more on the wire.
  let lastHeard = 0;
  net.tap = (fromHost) => {
    if (fromHost === '10.0.4.1') lastHeard = clock.now();
  };
  await clock.advanceAsync(1000);
  net.endpoints.get('10.0.4.1:7000')?.close();
  const heard = lastHeard;
  assert.ok(heard > 0);
  await clock.advanceAsync(heard + DEAD_PEER_AFTER_MS - LINK_TICK_MS - clock.now());
  assert.equal(down.length, 0, 'declared dead early');
  await until(clock, 'dead', () => down.length === 1, 3 * LINK_TICK_MS);
  assert.match(String(down[0]), /peer dead: nothing heard for 10 s/);
  const silence = clock.now() - heard;
  assert.ok(
    silence > DEAD_PEER_AFTER_MS && silence <= DEAD_PEER_AFTER_MS + 2 * LINK_TICK_MS,
    `${silence} ms`,
  );
  // It comes back: the persistent dial links again.
  const again = new LinkEndpoint({
    identity: listenerId,
    transport: net.transport('10.0.4.1', 7000),
    listen: { allowedIds: null },
    clock,
  });
  stops.push(() => again.stop());
  await again.start();
  await until(clock, 'redialled', () => dialer.upPeers().length === 1, 60_000);
});

test('a build step that fails wipes its ntor secret; a new build succeeds once the exit is there', async () => {
  const { clock, net } = world();
  const guard = await relayAt(clock, net, 0);
  // The exit's descriptor names an address where nothing listens any more.
  const ghost = await relayAt(clock, net, 1, true);
  stopNode(ghost);
  const device = new MemoryDevice('c0');
  const progress: string[] = [];
  const relays = [guard.desc, ghost.desc];
  const client = new ClientNode({
    relays: () => relays,
    transport: net.transport('10.9.0.2', 40000),
    device,
    hops: 2,
    stateDir: null,
    clock,
    onProgress: (t) => progress.push(t),
  });
  const liveBefore = ntorClientStatesLive();
  await client.start();
  stops.push(() => client.stop());
  await until(clock, 'a failed build', () => client.counters.circuitFailures >= 1, 60_000, 20);
  assert.equal(client.ready, false);
  assert.ok(
    progress.some((t) => t.startsWith('  hop 1/2')),
    progress.join('\n'),
  );
  assert.ok(
    progress.some((t) =>
      /circuit build failed: (hop 1 could not extend|no answer from hop 1)/.test(t),
    ),
    progress.join('\n'),
  );
  // The failed step's handshake (the exit's) holds no secret any more.
  assert.equal(ntorClientStatesLive(), liveBefore);
  // A live exit appears: the next build through it succeeds.
  const exit = await relayAt(clock, net, 2, true);
  relays.splice(1, 1, exit.desc);
  await until(clock, 'circuit', () => client.ready, 120_000, 20);
  assert.equal(ntorClientStatesLive(), liveBefore);
});

test("an idle client's lease is released at the exit once its circuit is gone", async () => {
  const { clock, net } = world();
  const guard = await relayAt(clock, net, 0);
  const middle = await relayAt(clock, net, 1);
  const exit = await relayAt(clock, net, 2, true);
  const client = new ClientNode({
    relays: () => [guard.desc, middle.desc, exit.desc],
    exitId: exit.id,
    transport: net.transport('10.9.0.2', 40000),
    device: new MemoryDevice('c1'),
    hops: 3,
    stateDir: null,
    clock,
  });
  await client.start();
  stops.push(() => client.stop());
  await until(clock, 'circuit', () => client.ready, 60_000, 10);
  const sessions = () => (exit.exit?.describe() as { leases: unknown[] }).leases.length;
  assert.equal(sessions(), 1);
  // An hour idle: the client's PINGs keep the circuit and its lease.
  await clock.advanceAsync(3_600_000);
  assert.equal(client.ready, true);
  assert.equal(sessions(), 1);
  assert.equal(exit.node.circuits, 1);
  // The client stops (DESTROY down the path): the exit forgets the session.
  client.stop();
  await until(clock, 'circuit closed at the exit', () => exit.node.circuits === 0, 5000);
  await until(clock, 'lease released', () => sessions() === 0, 3_600_000, 1000);
});

test('virtual time: an hour of a 3-hop overlay takes little real time', async () => {
  const { clock, net } = world();
  const nodes: SimNode[] = [];
  for (let k = 0; k < 4; k += 1) nodes.push(await relayAt(clock, net, k, k === 3));
  const client = new ClientNode({
    relays: () => nodes.map((n) => n.desc),
    transport: net.transport('10.9.0.3', 40000),
    device: new MemoryDevice('c2'),
    hops: 3,
    stateDir: null,
    clock,
  });
  await client.start();
  stops.push(() => client.stop());
  const started = performance.now();
  await until(clock, 'circuit', () => client.ready, 60_000, 10);
  await clock.advanceAsync(3_600_000);
  const realMs = performance.now() - started;
  assert.equal(client.ready, true);
  assert.equal(client.counters.circuitsBuilt, 1, 'one circuit held for the hour');
  // 3.6e6 ms of protocol time (keepalives, PINGs, re-keys, epochs) in seconds.
  assert.ok(realMs < 60_000, `${realMs} ms`);
});

test('a guard gone for 30 minutes: circuits go through the next primary, the sampled set stays, and the guard is used again once back', async () => {
  const { clock, net } = world();
  const nodes: SimNode[] = [];
  for (let k = 0; k < 5; k += 1) nodes.push(await relayAt(clock, net, k, k === 4));
  const guardsUsed: string[] = [];
  const client = new ClientNode({
    relays: () => nodes.map((n) => n.desc),
    transport: net.transport('10.9.0.4', 40000),
    device: new MemoryDevice('c3'),
    hops: 3,
    stateDir: null,
    clock,
    onGuard: (g) => guardsUsed.push(g.id),
  });
  await client.start();
  stops.push(() => client.stop());
  await until(clock, 'circuit', () => client.ready, 60_000, 10);
  const sampled = () => (client.describe() as { guards: string[] }).guards;
  const before = [...sampled()];
  const first = guardsUsed.at(-1) as string;
  const gone = nodes.find((n) => n.id === first) as SimNode;
  // Its host vanishes (no CLOSE): the client notices the silent link and rebuilds elsewhere.
  net.endpoints.get(`${gone.host}:7000`)?.close();
  const lostAt = clock.now();
  await until(
    clock,
    'rebuilt elsewhere',
    () => client.ready && guardsUsed.at(-1) !== first,
    60_000,
    20,
  );
  const other = guardsUsed.at(-1) as string;
  assert.ok(before.includes(other), 'the new guard was already sampled');
  await clock.advanceAsync(lostAt + 30 * 60_000 - clock.now());
  // Sampling may add a guard (guard-spec keeps enough usable ones), but none leaves.
  assert.deepEqual(
    before.filter((id) => !sampled().includes(id)),
    [],
    'a guard was dropped during the outage',
  );
  assert.equal(client.ready, true);
  // It comes back (a restart: same identity, same address).
  const back = new RelayNode({
    identity: gone.identity,
    transport: net.transport(gone.host, 7000),
    clock,
    allowPrivateExtend: true,
  });
  await back.start();
  stops.push(() => back.stop());
  // The next circuit (the current one's middle fails) starts at the first primary again.
  const current = nodes.find(
    (n) =>
      n.id === (client.describe() as { circuit: { hops: { id: string }[] } }).circuit.hops[1]?.id,
  ) as SimNode;
  // Primaries that failed are retried every 10 minutes (guard-spec A.1).
  await clock.advanceAsync(11 * 60_000);
  net.endpoints.get(`${current.host}:7000`)?.close();
  const n = guardsUsed.length;
  await until(clock, 'a new circuit', () => guardsUsed.length > n && client.ready, 120_000, 20);
  assert.equal(guardsUsed.at(-1), first, `guards tried: ${guardsUsed.join(' ')}`);
  assert.deepEqual(
    before.filter((id) => !sampled().includes(id)),
    [],
  );
});
