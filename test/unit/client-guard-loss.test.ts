/**
 * A client whose guard shuts down cleanly rebuilds through its next primary
 * guard at once, and never through the stopped relay as a middle: the
 * stopped relay's descriptor is still listed, and a path that extends to it
 * stalls for the step timeout (10 s). The overlay simulator's stop run
 * missed its rebuild deadline that way about half the time.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { ClientNode } from '../../client/client-node.js';
import { AddressPool } from '../../exit/address-pool.js';
import { ExitHandler } from '../../exit/exit-node.js';
import { ExitPolicy, parseAllowList } from '../../exit/policy.js';
import { RelayNode } from '../../relay/relay-node.js';
import {
  signDescriptor,
  verifyDescriptor,
  type Descriptor,
} from '../../src/descriptor/descriptor.js';
import { ephemeralIdentity, type Identity } from '../../src/identity.js';
import { MemoryNetwork } from '../../src/link/transport.js';
import { parseCidr } from '../../src/net/cidr.js';
import { MemoryDevice } from '../../src/tun/device.js';
import { waitFor } from '../helpers/netns.js';

const stops: (() => void)[] = [];
after(() => stops.forEach((s) => s()));

/** Clients in the test: about half take the stopped relay as their guard. */
const CLIENTS = 12;
/** The rebuild deadline after the stop (a lost handshake datagram costs 1-2 s). */
const REBUILD_WITHIN_MS = 5_000;

function describe(id: Identity, host: string, exit: boolean): Descriptor {
  const now = Math.floor(Date.now() / 1000);
  const wire = signDescriptor(id, {
    addresses: [{ host, port: 7000 }],
    roles: { relay: true, exit },
    policy: exit ? 'accept 10.7.0.0/16' : '',
    bandwidth: 1000,
    published: now,
    expires: now + 3600,
    network: 'memtest',
  });
  const r = verifyDescriptor(wire, { now, network: 'memtest' });
  assert.ok(r.ok);
  return r.descriptor;
}

async function relay(
  net: MemoryNetwork,
  host: string,
): Promise<{ node: RelayNode; desc: Descriptor }> {
  const id = ephemeralIdentity();
  const node = new RelayNode({
    identity: id,
    transport: net.transport(host, 7000),
    allowPrivateExtend: true,
  });
  await node.start();
  stops.push(() => node.stop());
  return { node, desc: describe(id, host, false) };
}

test('a guard that shuts down: every client on it rebuilds through another guard, never via the stopped relay', async () => {
  const net = new MemoryNetwork();
  const a = await relay(net, '10.1.0.2');
  const b = await relay(net, '10.2.0.2');
  const c = await relay(net, '10.3.0.2');
  const d = await relay(net, '10.4.0.2');
  const exitId = ephemeralIdentity();
  const exitRelay = new RelayNode({
    identity: exitId,
    transport: net.transport('10.5.0.2', 7000),
    allowPrivateExtend: true,
  });
  const exit = new ExitHandler(
    exitRelay,
    new MemoryDevice('exit0'),
    new AddressPool(parseCidr('10.200.0.1/24')),
    new ExitPolicy({
      allow: parseAllowList(['10.7.0.0/16']),
      ownNetworks: [parseCidr('10.5.0.2/16')],
    }),
  );
  exitRelay.lastHop = exit;
  await exitRelay.start();
  exit.start();
  stops.push(() => {
    exit.stop();
    exitRelay.stop();
  });
  const exitDesc = describe(exitId, '10.5.0.2', true);
  // First circuits through A and B only (each client's guard is one, its
  // middle the other); C and D are listed from the stop on, so a client
  // whose guard A stopped has its next primary B as guard and A, C or D as
  // middles. (Its first retry may still go to A as guard, when A's DESTROY
  // comes before its link's close, and mark that path's middle failed.)
  let listed = [a.desc, b.desc, exitDesc];
  const clients: { node: ClientNode; paths: Descriptor[][]; tries: string[] }[] = [];
  for (let i = 0; i < CLIENTS; i += 1) {
    const rec = { paths: [] as Descriptor[][], tries: [] as string[] };
    const node = new ClientNode({
      relays: () => listed,
      transport: net.transport(`10.9.0.${i + 2}`, 40000),
      device: new MemoryDevice(`c${i}`),
      hops: 3,
      stateDir: null,
      onCircuit: (path) => rec.paths.push(path),
      onProgress: (line) => {
        rec.tries.push(`${Date.now() % 100000} ${line}`);
      },
    });
    await node.start();
    stops.push(() => node.stop());
    clients.push({ node, ...rec });
  }
  await waitFor('first circuits', () => clients.every((k) => k.node.ready), 20_000, 20);
  const affected = clients.filter((k) => k.paths.at(-1)?.[0]?.id === a.desc.id);
  assert.ok(affected.length >= 1, 'some client has A as its guard');
  listed = [a.desc, b.desc, c.desc, d.desc, exitDesc];
  for (const k of clients) k.tries.length = 0;
  const built = affected.map((k) => k.paths.length);
  const stoppedAt = Date.now();
  a.node.stop();
  await waitFor(
    `${affected.length} clients rebuilt`,
    () => affected.every((k, i) => k.paths.length > (built[i] as number) && k.node.ready),
    REBUILD_WITHIN_MS,
    20,
  ).catch(() => {
    assert.fail(
      `not every client on the stopped guard rebuilt within ${REBUILD_WITHIN_MS} ms; ` +
        `their tries: ${JSON.stringify(affected.map((k) => k.tries))}`,
    );
  });
  const tookMs = Date.now() - stoppedAt;
  for (const k of clients) {
    for (const line of k.tries.filter((l) => l.includes('building circuit: '))) {
      const middle = line.split(' -> ')[1] ?? '';
      assert.ok(
        !middle.endsWith('@10.1.0.2'),
        `a path through the stopped relay as a middle: ${line}`,
      );
    }
  }
  for (const k of affected) {
    const p = k.paths.at(-1) as Descriptor[];
    assert.equal(p[0]?.id, b.desc.id, 'the next primary guard carries the new circuit');
  }
  assert.ok(tookMs < REBUILD_WITHIN_MS);
});
