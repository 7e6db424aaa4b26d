// Attacks on a relay's extend path, performed over the in-memory network
// with the real relay, link and onion code (docs/protocol.md section 7.4,
// docs/threat-model.md section 8):
// - a looping circuit A->B->C->A->... that would make every client cell
//   cross the same relays again and again (hole 4 of issue 9);
// - EXTENDs toward black-holed addresses that fill the relay's wait list,
//   and a CREATE flood, while an honest client builds through the relay
//   (hole 5);
// - EXTENDs toward loopback and private addresses (hole 9, relay half).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, test } from 'node:test';
import { ClientNode } from '../../client/client-node.js';
import { AddressPool } from '../../exit/address-pool.js';
import { ExitHandler } from '../../exit/exit-node.js';
import { ExitPolicy, parseAllowList } from '../../exit/policy.js';
import {
  CREATE_BURST,
  MAX_EXTEND_TARGETS,
  MAX_EXTEND_WAIT_PER_LINK,
  RelayNode,
} from '../../relay/relay-node.js';
import { DestroyReason, MAX_HOPS, Relay } from '../../src/circuit/cells.js';
import {
  signDescriptor,
  verifyDescriptor,
  type Descriptor,
} from '../../src/descriptor/descriptor.js';
import { ephemeralIdentity, type Identity } from '../../src/identity.js';
import type { LinkPeer } from '../../src/link/endpoint.js';
import { MemoryNetwork } from '../../src/link/transport.js';
import { parseCidr } from '../../src/net/cidr.js';
import { MemoryDevice } from '../../src/tun/device.js';
import { waitFor } from '../helpers/netns.js';
import { RawClient, type RawCircuit, type RelayRef } from '../helpers/raw-circuit.js';
import { TokenBucket } from '../../relay/rate-limiter.js';

const stops: (() => void)[] = [];
after(() => stops.forEach((s) => s()));

interface TestRelay {
  node: RelayNode;
  ref: RelayRef;
  id: Identity;
}

async function relay(
  net: MemoryNetwork,
  host: string,
  port = 7000,
  allowPrivateExtend = true,
): Promise<TestRelay> {
  const id = ephemeralIdentity();
  const node = new RelayNode({
    identity: id,
    transport: net.transport(host, port),
    allowPrivateExtend,
  });
  await node.start();
  stops.push(() => node.stop());
  return {
    node,
    id,
    ref: { id: id.id, publicKey: id.publicKey, onionKey: id.onionPublic, host, port },
  };
}

async function rawClient(net: MemoryNetwork, host: string): Promise<RawClient> {
  const c = new RawClient(net, host);
  await c.start();
  stops.push(() => c.stop());
  return c;
}

/** A relay nobody runs, at a public address where nothing answers. */
function blackHole(i: number): RelayRef {
  return {
    id: randomBytes(32).toString('hex'),
    publicKey: randomBytes(32),
    onionKey: randomBytes(32),
    host: `198.51.${100 + (i >> 8)}.${i & 0xff}`,
    port: 7000,
  };
}

// --- hole 4: circuit length and loops -----------------------------------------------

test('a looping circuit A->B->C->A->...: the relays refuse the 4th hop, a client cell crosses at most MAX_HOPS relays', async (t) => {
  const net = new MemoryNetwork();
  const ring = [
    await relay(net, '10.41.0.2'),
    await relay(net, '10.42.0.2'),
    await relay(net, '10.43.0.2'),
  ];
  const h = await rawClient(net, '10.49.0.2');
  const guard = ring[0] as TestRelay;
  const peer = await h.link(guard.ref);
  // The hostile client claims the smallest depth, which leaves it the most room.
  const [circ, made] = await h.create(peer, guard.ref, 1);
  assert.equal(made.kind, 'ok');
  // Extend round the ring, as far as the onion code can wrap (8 hops).
  const answers: string[] = [];
  for (let hop = 2; hop <= 8; hop += 1) {
    const next = ring[(hop - 1) % 3] as TestRelay;
    const a = await h.extend(circ, next.ref);
    answers.push(a.kind === 'failed' ? `failed ${a.reason}` : a.kind);
    if (a.kind !== 'ok') break;
  }
  // Amplification: client cells sent into the circuit, cells the relays carried.
  const last = ring[(circ.hops - 1) % 3] as TestRelay;
  const before = ring.reduce((n, r) => n + r.node.counters.cellsIn, 0);
  const cells = 30;
  for (let i = 0; i < cells; i += 1) h.sendRelay(circ, Relay.ping, Buffer.alloc(8, i));
  h.flush();
  await waitFor('the pings carried', () => last.node.counters.drops.notExit >= cells, 5000, 10);
  await new Promise((r) => setTimeout(r, 100));
  const perCell = (ring.reduce((n, r) => n + r.node.counters.cellsIn, 0) - before) / cells;
  t.diagnostic(
    `circuit of ${circ.hops} hops (${answers.join(', ')}); ${perCell} cells carried per client cell`,
  );
  assert.ok(perCell <= MAX_HOPS, `each client cell was carried ${perCell} times`);

  assert.equal(circ.hops, MAX_HOPS, `circuit length ${circ.hops}: ${answers.join(', ')}`);
  assert.deepEqual(answers.slice(0, MAX_HOPS - 1), Array(MAX_HOPS - 1).fill('ok'));
  assert.equal(answers[MAX_HOPS - 1], `failed ${DestroyReason.tooManyHops}`, 'the 4th hop refused');
  // Refused by the hop at depth MAX_HOPS, and counted there.
  assert.equal(last.node.counters.drops.extendTooManyHops, 1);
  // A repeated EXTEND gets the same answer (one attempt per circuit), and no second refusal count.
  const again = await h.extend(circ, guard.ref);
  assert.deepEqual(again, { kind: 'failed', reason: DestroyReason.tooManyHops });
  assert.equal(last.node.counters.drops.extendTooManyHops, 1);
});

test('the depth a client claims bounds the circuit: depth d leaves MAX_HOPS - d + 1 hops; 0 and MAX_HOPS + 1 are refused', async () => {
  const net = new MemoryNetwork();
  const ring = [
    await relay(net, '10.44.0.2'),
    await relay(net, '10.45.0.2'),
    await relay(net, '10.46.0.2'),
  ];
  const h = await rawClient(net, '10.49.0.3');
  const guard = ring[0] as TestRelay;
  const peer = await h.link(guard.ref);
  for (let depth = 1; depth <= MAX_HOPS; depth += 1) {
    const [circ, made] = await h.create(peer, guard.ref, depth);
    assert.equal(made.kind, 'ok');
    let refusal = -1;
    for (let hop = 2; hop <= MAX_HOPS + 1; hop += 1) {
      const a = await h.extend(circ, (ring[(hop - 1) % 3] as TestRelay).ref);
      if (a.kind === 'failed') refusal = a.reason;
      if (a.kind !== 'ok') break;
    }
    assert.equal(circ.hops, MAX_HOPS - depth + 1, `depth ${depth}`);
    assert.equal(refusal, DestroyReason.tooManyHops, `depth ${depth}`);
  }
  for (const depth of [0, MAX_HOPS + 1, 255]) {
    const [, a] = await h.create(peer, guard.ref, depth);
    assert.deepEqual(a, { kind: 'destroyed', reason: DestroyReason.protocol }, `depth ${depth}`);
  }
  assert.equal(guard.node.counters.drops.badDepth, 3);
});

// --- hole 9: extends to loopback and private addresses -------------------------------------

test('a relay refuses to extend to 127.0.0.1, 10.x and [::1] by default, and extends there with allowPrivateExtend', async () => {
  const net = new MemoryNetwork();
  const targets = [
    await relay(net, '127.0.0.1', 7001),
    await relay(net, '10.53.0.2'),
    await relay(net, '::1', 7002),
  ];
  const strict = await relay(net, '10.51.0.2', 7000, false);
  const open = await relay(net, '10.52.0.2', 7000, true);
  const h = await rawClient(net, '10.59.0.2');
  for (const [r, allowed] of [
    [strict, false],
    [open, true],
  ] as const) {
    const peer = await h.link(r.ref);
    for (const t of targets) {
      const [circ] = await h.create(peer, r.ref, 1);
      const a = await h.extend(circ, t.ref);
      assert.deepEqual(
        a,
        allowed ? { kind: 'ok' } : { kind: 'failed', reason: DestroyReason.forbiddenAddress },
        `${allowed ? 'open' : 'strict'} relay extending to ${t.ref.host}`,
      );
    }
    assert.equal(r.node.counters.drops.extendForbiddenAddress, allowed ? 0 : targets.length);
    assert.equal(
      r.node.counters.extends,
      allowed ? targets.length : 0,
      'nothing dialled when refused',
    );
  }
});

test('a client whose guard refuses a private next hop is told why', async () => {
  const net = new MemoryNetwork();
  const strict = await relay(net, '10.54.0.2', 7000, false);
  const exit = await exitAt(net, '10.55.0.2');
  const messages: string[] = [];
  const client = new ClientNode({
    relays: () => [describeRelay(strict.id, '10.54.0.2', false), exit],
    exitId: exit.id,
    transport: net.transport('10.59.0.3', 40000),
    device: new MemoryDevice('c-strict'),
    hops: 2,
    stateDir: null,
    onProgress: (m) => messages.push(m),
  });
  stops.push(() => client.stop());
  await client.start();
  await waitFor('a failed build', () => client.counters.circuitFailures > 0, 10_000, 10);
  client.stop();
  const failure = messages.find((m) => m.startsWith('circuit build failed'));
  assert.match(failure ?? '', /hop 1 could not extend: the relay does not extend to that address/);
  assert.equal(client.ready, false);
});

// --- hole 5: EXTEND queue exhaustion and CREATE floods --------------------------------------

function describeRelay(id: Identity, host: string, exit: boolean): Descriptor {
  const now = Math.floor(Date.now() / 1000);
  const wire = signDescriptor(id, {
    addresses: [{ host, port: 7000 }],
    roles: { relay: true, exit },
    policy: exit ? 'accept 10.7.0.0/16' : '',
    bandwidth: 1000,
    published: now,
    expires: now + 3600,
    network: 'limits',
  });
  const r = verifyDescriptor(wire, { now, network: 'limits' });
  assert.ok(r.ok);
  return r.descriptor;
}

async function exitAt(net: MemoryNetwork, host: string): Promise<Descriptor> {
  const id = ephemeralIdentity();
  const node = new RelayNode({
    identity: id,
    transport: net.transport(host, 7000),
    allowPrivateExtend: true,
  });
  const exit = new ExitHandler(
    node,
    new MemoryDevice(`e-${host}`),
    new AddressPool(parseCidr('10.200.0.1/24')),
    new ExitPolicy({
      allow: parseAllowList(['10.7.0.0/16']),
      ownNetworks: [parseCidr(`${host}/16`)],
    }),
  );
  node.lastHop = exit;
  await node.start();
  exit.start();
  stops.push(() => {
    exit.stop();
    node.stop();
  });
  return describeRelay(id, host, true);
}

/**
 * Flood `r` from each hostile client: `initial` CREATEs at once, then 2
 * every 50 ms (40 a second, twice the CREATE budget, and about what keeps
 * the old code's wait list full: 512 slots held 10 s each), and on every
 * circuit that gets CREATED an EXTEND to a black-holed address. Runs
 * until the returned function is called.
 */
function flood(
  clients: RawClient[],
  r: TestRelay,
  peers: Map<RawClient, LinkPeer>,
  initial: number,
) {
  let i = 0;
  let stopped = false;
  let first = true;
  const extended = new Set<RawCircuit>();
  const round = (): void => {
    if (stopped) return;
    for (const h of clients) {
      const peer = peers.get(h);
      if (!peer) continue;
      for (let k = 0; k < (first ? initial : 2); k += 1) h.sendCreate(peer, r.ref, 1);
      for (const c of h.circuits.values()) {
        if (c.created && !extended.has(c)) {
          extended.add(c);
          h.finishCreate(c);
          h.sendExtend(c, blackHole(i++ % 60_000));
        }
      }
      h.flush();
    }
    first = false;
    setTimeout(round, 50);
  };
  round();
  return () => {
    stopped = true;
  };
}

async function honestBuilds(
  net: MemoryNetwork,
  guard: Descriptor,
  exits: Descriptor[],
  tag: number,
): Promise<{ failures: number; built: number; ms: number[] }> {
  const out = { failures: 0, built: 0, ms: [] as number[] };
  // Each exit twice: first not yet linked to the guard, then linked.
  for (const [k, e] of [...exits, ...exits].entries()) {
    const client = new ClientNode({
      relays: () => [guard, e],
      exitId: e.id,
      transport: net.transport(`10.70.${tag}.${k + 2}`, 40000),
      device: new MemoryDevice(`c${tag}-${k}`),
      hops: 2,
      stateDir: null,
    });
    stops.push(() => client.stop());
    const t0 = Date.now();
    await client.start();
    await waitFor(
      `honest circuit ${k + 1}`,
      () => client.ready || client.counters.circuitFailures > 0,
      10_000,
      10,
    );
    out.ms.push(Date.now() - t0);
    out.failures += client.counters.circuitFailures;
    if (client.ready) out.built += 1;
    client.stop();
  }
  return out;
}

test('a flood of CREATEs and EXTENDs to black holes from one peer: honest circuits through the same relay still build', async (t) => {
  const net = new MemoryNetwork();
  const target = await relay(net, '10.61.0.2');
  const guard = describeRelay(target.id, '10.61.0.2', false);
  const exits = [await exitAt(net, '10.62.0.2'), await exitAt(net, '10.63.0.2')];
  const h = await rawClient(net, '10.69.0.2');
  const peers = new Map([[h, await h.link(target.ref)]]);
  const stop = flood([h], target, peers, MAX_EXTEND_TARGETS + 20);
  try {
    // Let the flood fill what it can (on the old code: all 512 wait slots).
    await new Promise((r) => setTimeout(r, 1500));
    const result = await honestBuilds(net, guard, exits, 1);
    const d = target.node.counters.drops;
    const report = `${JSON.stringify(result)}; waiting ${target.node.extendsWaiting}; circuits created ${target.node.counters.circuitsCreated}; links ${target.node.endpoint.peers.size}, peerLimit ${target.node.endpoint.counters.drops.peerLimit}; drops ${JSON.stringify(d)}`;
    t.diagnostic(report);
    assert.equal(result.failures, 0, report);
    assert.equal(result.built, exits.length * 2, report);
    assert.ok(d.createRateLimited > 0, report);
    assert.ok(target.node.extendsWaiting <= MAX_EXTEND_WAIT_PER_LINK, report);
    // Over ~5 s the peer got its burst and 20 a second, not the hundreds it sent.
    assert.ok(target.node.counters.circuitsCreated <= CREATE_BURST + 200, report);
  } finally {
    stop();
  }
});

test('hostile peers that together fill the wait table: an honest EXTEND that must dial still gets a slot (fair share)', async (t) => {
  const net = new MemoryNetwork();
  const target = await relay(net, '10.64.0.2');
  const guard = describeRelay(target.id, '10.64.0.2', false);
  const exits = [await exitAt(net, '10.65.0.2'), await exitAt(net, '10.66.0.2')];
  // Enough peers that their per-link caps add up to more than the table.
  const n = Math.ceil(MAX_EXTEND_TARGETS / MAX_EXTEND_WAIT_PER_LINK) + 1;
  const hs: RawClient[] = [];
  const peers = new Map<RawClient, LinkPeer>();
  for (let i = 0; i < n; i += 1) {
    const h = await rawClient(net, `10.68.${i}.2`);
    hs.push(h);
    peers.set(h, await h.link(target.ref));
  }
  const stop = flood(hs, target, peers, MAX_EXTEND_WAIT_PER_LINK);
  try {
    await waitFor(
      'the wait table full',
      () => target.node.extendsWaiting >= MAX_EXTEND_TARGETS,
      8000,
      20,
    );
    const result = await honestBuilds(net, guard, exits, 2);
    const d = target.node.counters.drops;
    const report = `${JSON.stringify(result)}; waiting ${target.node.extendsWaiting}; circuits created ${target.node.counters.circuitsCreated}; links ${target.node.endpoint.peers.size}, peerLimit ${target.node.endpoint.counters.drops.peerLimit}; drops ${JSON.stringify(d)}`;
    t.diagnostic(report);
    assert.equal(result.failures, 0, report);
    assert.equal(result.built, exits.length * 2, report);
    assert.ok(d.extendEvicted > 0, report);
    // Evicted extends give up their dials: link slots stay near the table's size.
    assert.ok(target.node.endpoint.peers.size <= MAX_EXTEND_TARGETS + 2 * n + 16, report);
    assert.ok(target.node.extendsWaiting <= MAX_EXTEND_TARGETS, report);
  } finally {
    stop();
  }
});

test('token bucket: a burst, then the rate, never more than the burst saved up', () => {
  const b = new TokenBucket(20, 40, 0);
  let n = 0;
  while (b.take(0)) n += 1;
  assert.equal(n, 40, 'the burst');
  assert.equal(b.take(49), false, 'not a whole token after 49 ms at 20 a second');
  assert.equal(b.take(50), true, 'one token after 50 ms');
  n = 0;
  for (let t = 1050; t <= 2050; t += 10) if (b.take(t)) n += 1;
  assert.ok(n >= 39 && n <= 41, `about 20 a second plus what was saved: ${n}`);
  n = 0;
  while (b.take(1_000_000)) n += 1;
  assert.equal(n, 40, 'an idle hour saves up only the burst');
  assert.equal(b.take(999_000), false, 'time going backwards adds nothing');
});
