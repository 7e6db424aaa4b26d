/**
 * Discovery's two address holes (issue 9, hole 9, client half), over real
 * UDP on loopback (no root):
 *
 * - The key-query answer was unauthenticated and the first one won: a
 *   racer answering first from the announced address decided which key the
 *   client took. Now an answer must be signed over the query's nonce; the
 *   forgeries below arrive first and the real key is still the one used.
 * - Clients dialled a descriptor's first address although discovery had
 *   vetted another. Here every relay's descriptor lists a black hole first
 *   and the vetted address second: the client must build its circuit.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { test } from 'node:test';
import { ClientNode } from '../../client/client-node.js';
import { AddressPool } from '../../exit/address-pool.js';
import { ExitHandler } from '../../exit/exit-node.js';
import { ExitPolicy, parseAllowList } from '../../exit/policy.js';
import { RelayNode } from '../../relay/relay-node.js';
import { ClientDevice, EchoHostDevice } from '../../simulations/packets.js';
import { signDescriptor, verifyDescriptor } from '../../src/descriptor/descriptor.js';
import type { DhtNode } from '../../src/discovery/dht-node.js';
import { RelayFinder } from '../../src/discovery/finder.js';
import {
  decodeKeyQuery,
  encodeKeyAnswer,
  encodeKeyQuery,
  KeyQueryResponder,
} from '../../src/discovery/key-query.js';
import { ephemeralIdentity, type Identity } from '../../src/identity.js';
import { UdpTransport } from '../../src/link/transport.js';
import { parseCidr } from '../../src/net/cidr.js';

const NETWORK = 'vetting';

function bind(s: dgram.Socket): Promise<number> {
  return new Promise((resolve) => s.bind(0, '127.0.0.1', () => resolve(s.address().port)));
}

type QueryKey = (h: string, p: number) => Promise<Buffer[] | null>;
const queryKeyOf = (f: RelayFinder): QueryKey =>
  (f as unknown as { queryKey: QueryKey }).queryKey.bind(f);

test('forged key answers racing ahead of the real one do not decide the key', async () => {
  const relay = ephemeralIdentity();
  const forger = ephemeralIdentity();
  const responder = new KeyQueryResponder(relay.publicKey, relay.secretKey);
  // A genuine answer to an earlier query, for a replay.
  const oldAnswer = responder.respond(encodeKeyQuery(randomBytes(32)), 0) as Buffer;
  const s = dgram.createSocket('udp4');
  let onPath = false;
  s.on('message', (m, r) => {
    const nonce = decodeKeyQuery(m);
    if (!nonce) return;
    const flipped = encodeKeyAnswer(relay.publicKey, relay.secretKey, nonce);
    flipped[50] = (flipped[50] as number) ^ 1;
    const forgeries = [
      encodeKeyAnswer(forger.publicKey, forger.secretKey, randomBytes(32)), // guessed nonce
      oldAnswer, // replay
      flipped, // the relay's key, a broken signature
      Buffer.concat([
        encodeKeyAnswer(forger.publicKey, forger.secretKey, nonce).subarray(0, 37),
        randomBytes(64),
      ]),
    ];
    // Someone on the path sees the nonce and signs with a key of its own.
    if (onPath) forgeries.push(encodeKeyAnswer(forger.publicKey, forger.secretKey, nonce));
    for (const f of forgeries) s.send(f, r.port, r.address);
    setTimeout(() => {
      const a = responder.respond(m, Date.now());
      if (a) s.send(a, r.port, r.address);
    }, 20);
  });
  const port = await bind(s);
  const finder = new RelayFinder({ dht: {} as DhtNode, network: NETWORK, stateDir: null });
  try {
    const keys = await queryKeyOf(finder)('127.0.0.1', port);
    assert.deepEqual(keys, [relay.publicKey], 'the real key, and only it');
    assert.ok(finder.counters.badKeyAnswers >= 4, `${finder.counters.badKeyAnswers} dropped`);
    onPath = true;
    const both = await queryKeyOf(finder)('127.0.0.1', port);
    assert.ok(
      both?.some((k) => k.equals(relay.publicKey)),
      'the real key is not shut out',
    );
    assert.ok(
      both?.some((k) => k.equals(forger.publicKey)),
      'the on-path key is checked on its own',
    );
  } finally {
    finder.stop();
    s.close();
  }
});

test('a relay listed at a black hole first and at its vetted address second: the client links', async (t) => {
  // The black hole: a socket that never answers.
  const hole = dgram.createSocket('udp4');
  const holePort = await bind(hole);
  const relays: Array<{ id: Identity; node: RelayNode; port: number; wire: Buffer }> = [];
  const nodes: RelayNode[] = [];
  const exits: ExitHandler[] = [];
  let client: ClientNode | null = null;
  const finder = new RelayFinder({
    dht: {
      lookup: () => Promise.resolve(relays.map((r) => ({ host: '127.0.0.1', port: r.port }))),
      getMutable: (key: Buffer) =>
        Promise.resolve(
          ((w) => (w ? { value: w, seq: 1 } : null))(
            relays.find((r) => r.id.publicKey.equals(key))?.wire,
          ),
        ),
    } as unknown as DhtNode,
    network: NETWORK,
    stateDir: null,
  });
  try {
    for (let i = 0; i < 3; i += 1) {
      const id = ephemeralIdentity();
      const transport = new UdpTransport('127.0.0.1', 0);
      // Loopback relays: extends to 127.0.0.1 must be allowed (protocol 7.4.2).
      const node = new RelayNode({ identity: id, transport, allowPrivateExtend: true });
      nodes.push(node);
      const exit = i === 2;
      if (exit) {
        const h = new ExitHandler(
          node,
          new EchoHostDevice('exit'),
          new AddressPool(parseCidr('10.200.0.1/16')),
          new ExitPolicy({ allow: parseAllowList(['10.7.0.0/16']), ownNetworks: [] }),
        );
        node.lastHop = h;
        exits.push(h);
      }
      await node.start();
      exits.at(-1)?.start();
      const port = transport.address().port;
      const now = Math.floor(Date.now() / 1000);
      const wire = signDescriptor(id, {
        addresses: [
          { host: '127.0.0.1', port: holePort },
          { host: '127.0.0.1', port },
        ],
        roles: { relay: true, exit },
        policy: exit ? 'accept 10.7.0.0/16' : '',
        bandwidth: 1000,
        published: now,
        expires: now + 3600,
        network: NETWORK,
      });
      assert.ok(verifyDescriptor(wire, { now, network: NETWORK }).ok);
      relays.push({ id, node, port, wire });
    }
    assert.equal(await finder.refresh(), 3);
    for (const d of finder.relays()) {
      const r = relays.find((x) => x.id.id === d.id);
      assert.deepEqual(
        d.addresses,
        [{ host: '127.0.0.1', port: r?.port }],
        'only the vetted address',
      );
    }
    client = new ClientNode({
      relays: () => finder.relays(),
      transport: new UdpTransport('127.0.0.1', 0),
      device: new ClientDevice('c0', 0, () => undefined),
      hops: 3,
      stateDir: null,
      allowSameSubnet: true,
    });
    const started = Date.now();
    await client.start();
    while (!client.ready && Date.now() - started < 9000)
      await new Promise((r) => setTimeout(r, 50));
    assert.ok(client.ready, 'a circuit through relays dialled at their vetted addresses');
    t.diagnostic(`circuit ready in ${Date.now() - started} ms`);
  } finally {
    client?.stop();
    for (const e of exits) e.stop();
    for (const n of nodes) n.stop();
    finder.stop();
    hole.close();
  }
});
