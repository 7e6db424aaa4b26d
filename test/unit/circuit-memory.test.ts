// A whole overlay in one process over the in-memory seams: a client, three
// relays and an exit, the real node code (links, DTLS, handshakes, onion
// layers, exit policy), without root. The end-to-end tests do the same
// with real processes, TUN devices and kernel NAT.
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
import { ephemeralIdentity, rotateOnionKey, type Identity } from '../../src/identity.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MemoryNetwork } from '../../src/link/transport.js';
import { parseCidr } from '../../src/net/cidr.js';
import { MemoryDevice } from '../../src/tun/device.js';
import { waitFor } from '../helpers/netns.js';

const stops: (() => void)[] = [];
after(() => stops.forEach((s) => s()));

function udp4(src: Buffer, dst: Buffer, payload: Buffer): Buffer {
  const p = Buffer.alloc(28 + payload.length);
  p[0] = 0x45;
  p.writeUInt16BE(p.length, 2);
  p[8] = 64;
  p[9] = 17;
  src.copy(p, 12);
  dst.copy(p, 16);
  p.writeUInt16BE(40000, 20);
  p.writeUInt16BE(7, 22);
  p.writeUInt16BE(8 + payload.length, 24);
  payload.copy(p, 28);
  return p;
}

function describe(id: Identity, host: string, port: number, exit: boolean): Descriptor {
  const now = Math.floor(Date.now() / 1000);
  const wire = signDescriptor(id, {
    addresses: [{ host, port }],
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

async function overlay(net: MemoryNetwork) {
  const relays: { node: RelayNode; desc: Descriptor; host: string }[] = [];
  for (let i = 1; i <= 4; i += 1) {
    const id = ephemeralIdentity();
    const host = `10.${i}.0.2`;
    const node = new RelayNode({
      identity: id,
      transport: net.transport(host, 7000),
      allowPrivateExtend: true,
    });
    await node.start();
    stops.push(() => node.stop());
    relays.push({ node, desc: describe(id, host, 7000, false), host });
  }
  const exitId = ephemeralIdentity();
  const exitRelay = new RelayNode({
    identity: exitId,
    transport: net.transport('10.5.0.2', 7000),
    allowPrivateExtend: true,
  });
  const exitDevice = new MemoryDevice('exit0');
  const exit = new ExitHandler(
    exitRelay,
    exitDevice,
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
  const exitDesc = describe(exitId, '10.5.0.2', 7000, true);
  return { relays, exitRelay, exit, exitDevice, exitDesc, exitId };
}

test('a client reaches the exit through a 3-hop circuit and replies come back', async () => {
  const net = new MemoryNetwork();
  const o = await overlay(net);
  const device = new MemoryDevice('c0');
  const leases: string[] = [];
  const client = new ClientNode({
    relays: () => [...o.relays.map((r) => r.desc), o.exitDesc],
    transport: net.transport('10.9.0.2', 40000),
    device,
    hops: 3,
    stateDir: null,
    onCircuit: (_path, lease) => leases.push([...lease.v4].join('.')),
  });
  await client.start();
  stops.push(() => client.stop());
  await waitFor('circuit', () => client.ready, 15_000, 20);
  assert.equal(leases.length, 1);
  const inner = Buffer.from(leases[0]!.split('.').map(Number));
  const dest = Buffer.from([10, 7, 0, 2]);
  device.inject([udp4(inner, dest, Buffer.from('hello through three hops'))]);
  await waitFor('packet at the exit', () => o.exitDevice.written.length === 1, 5000, 10);
  assert.ok(o.exitDevice.written[0]!.subarray(28).toString().includes('hello through three hops'));
  o.exitDevice.inject([udp4(dest, inner, Buffer.from('reply'))]);
  await waitFor('reply at the client', () => device.written.length === 1, 5000, 10);
  assert.equal(device.written[0]!.subarray(28).toString(), 'reply');
  // Each relay on the path forwarded cells; the guard saw the client, not the destination.
  const busy = o.relays.filter((r) => r.node.counters.cellsOut > 0);
  assert.equal(busy.length, 2, 'guard and middle forwarded');
  // Spoofed source: dropped at the exit.
  device.inject([udp4(Buffer.from([10, 200, 0, 99]), dest, Buffer.from('spoof'))]);
  await waitFor('spoof counted', () => o.exit.counters.drops.badSource === 1, 5000, 10);
  // Policy: a private destination outside the allow list is refused and the client told why.
  device.inject([udp4(inner, Buffer.from([192, 168, 1, 1]), Buffer.from('nope'))]);
  await waitFor('policy reject', () => client.lastRejection.startsWith('private'), 5000, 10);
  assert.equal(o.exitDevice.written.length, 1);
});

test('when the middle relay dies the client rebuilds to the same exit and keeps its address', async () => {
  const net = new MemoryNetwork();
  const o = await overlay(net);
  const device = new MemoryDevice('c1');
  const leases: string[] = [];
  const paths: string[][] = [];
  const client = new ClientNode({
    relays: () => [...o.relays.map((r) => r.desc), o.exitDesc],
    transport: net.transport('10.9.0.3', 40000),
    device,
    hops: 3,
    stateDir: null,
    onCircuit: (path, lease) => {
      leases.push([...lease.v4].join('.'));
      paths.push(path.map((d) => d.id));
    },
  });
  await client.start();
  stops.push(() => client.stop());
  await waitFor('circuit', () => client.ready, 15_000, 20);
  const middleId = paths[0]![1]!;
  const middle = o.relays.find((r) => r.desc.id === middleId)!;
  middle.node.stop();
  await waitFor('rebuilt circuit', () => paths.length === 2 && client.ready, 30_000, 50);
  assert.notEqual(paths[1]![1], middleId, 'a different middle');
  assert.equal(paths[1]![2], paths[0]![2], 'the same exit');
  assert.equal(leases[1], leases[0], 'the same inner address');
});

test('circuits build through 15% loss: CREATE, EXTEND and LEASE are retransmitted and idempotent', async () => {
  let seed = 99;
  const net = new MemoryNetwork(() => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const o = await overlay(net);
  net.lossRate = 0.15;
  const device = new MemoryDevice('c2');
  const client = new ClientNode({
    relays: () => [...o.relays.map((r) => r.desc), o.exitDesc],
    transport: net.transport('10.9.0.4', 40000),
    device,
    hops: 3,
    stateDir: null,
  });
  await client.start();
  stops.push(() => client.stop());
  await waitFor('circuit through loss', () => client.ready, 40_000, 50);
  assert.equal(o.exit.counters.leases, 1, 'one lease however many LEASE retransmissions');
});

test('onion key rotation: the previous key works during its grace period, then is refused', async () => {
  const net = new MemoryNetwork();
  const o = await overlay(net);
  const oldDesc = o.exitDesc;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shallot-rot-'));
  const prev = rotateOnionKey(dir, o.exitId);
  fs.rmSync(dir, { recursive: true, force: true });
  o.exitRelay.previousOnion = { ...prev, until: Date.now() + 60_000 };
  const client = (host: string, desc: Descriptor) => {
    const c = new ClientNode({
      relays: () => [desc],
      transport: net.transport(host, 40000),
      device: new MemoryDevice(),
      hops: 1,
      stateDir: null,
    });
    stops.push(() => c.stop());
    return c;
  };
  const withOld = client('10.9.1.1', oldDesc);
  await withOld.start();
  await waitFor('circuit with the previous onion key', () => withOld.ready, 10_000, 20);
  const newDesc = describe(o.exitId, '10.5.0.2', 7000, true);
  assert.ok(!newDesc.onionKey.equals(oldDesc.onionKey), 'the descriptor carries the new key');
  const withNew = client('10.9.1.2', newDesc);
  await withNew.start();
  await waitFor('circuit with the new onion key', () => withNew.ready, 10_000, 20);
  o.exitRelay.previousOnion = { ...prev, until: Date.now() - 1 };
  const before = o.exitRelay.counters.drops.badCreate;
  const late = client('10.9.1.3', oldDesc);
  await late.start();
  await waitFor('refused', () => o.exitRelay.counters.drops.badCreate > before, 10_000, 20);
  assert.equal(late.ready, false);
});
