// Off-path interference with links (issue 9, hole 6): an attacker who knows
// both relays' addresses and sends datagrams with a forged source address,
// but sees none of the real traffic. Real DTLS over the in-memory network;
// the attacker injects straight into it with the forged source.
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { after, test } from 'node:test';
import { ephemeralIdentity } from '../../src/identity.js';
import { LinkEndpoint, type LinkPeer } from '../../src/link/endpoint.js';
import { MSG_DATA } from '../../src/link/messages.js';
import { MemoryNetwork } from '../../src/link/transport.js';
import { waitFor } from '../helpers/netns.js';

const endpoints: LinkEndpoint[] = [];
after(() => endpoints.forEach((e) => e.stop()));

interface Side {
  ep: LinkEndpoint;
  id: string;
  up: LinkPeer[];
  down: string[];
  data: Buffer[];
}

async function side(
  net: MemoryNetwork,
  host: string,
  port: number,
  listen: boolean,
): Promise<Side> {
  const identity = ephemeralIdentity();
  const s: Side = {
    ep: undefined as unknown as LinkEndpoint,
    id: identity.id,
    up: [],
    down: [],
    data: [],
  };
  s.ep = new LinkEndpoint({
    identity,
    transport: net.transport(host, port),
    listen: listen ? { allowedIds: null } : null,
    onPeerUp: (p) => s.up.push(p),
    onPeerDown: (_p, reason) => s.down.push(reason),
    onMessage: (_p, _t, buf, o, len) => s.data.push(Buffer.from(buf.subarray(o, o + len))),
  });
  endpoints.push(s.ep);
  await s.ep.start();
  return s;
}

/** A DTLS 1.2 record: the sequence number is the attacker's guess. */
function record(type: number, epoch: number, seq: number, body: Buffer): Buffer {
  const h = Buffer.alloc(13);
  h[0] = type;
  h[1] = 0xfe;
  h[2] = 0xfd;
  h.writeUInt16BE(epoch, 3);
  h.writeUIntBE(seq, 5, 6);
  h.writeUInt16BE(body.length, 11);
  return Buffer.concat([h, body]);
}

/** A handshake message in one fragment. */
function handshake(type: number, messageSeq: number, body: Buffer): Buffer {
  const h = Buffer.alloc(12);
  h[0] = type;
  h.writeUIntBE(body.length, 1, 3);
  h.writeUInt16BE(messageSeq, 4);
  h.writeUIntBE(0, 6, 3);
  h.writeUIntBE(body.length, 9, 3);
  return Buffer.concat([h, body]);
}

const FATAL_ALERT = Buffer.from([2, 40]); // fatal handshake_failure

/**
 * What an off-path attacker can forge in epoch 0, with the record numbers
 * a handshake from a fresh session uses (0 to 15) and the message numbers
 * the protocol fixes.
 */
function forgeries(toDialer: boolean, seq: number): Buffer[] {
  const hvr = Buffer.concat([Buffer.from([0xfe, 0xff, 32]), randomBytes(32)]);
  const serverHello = Buffer.concat([
    Buffer.from([0xfe, 0xfd]),
    randomBytes(32),
    Buffer.from([0, 0xcc, 0xa9, 0, 0, 0]),
  ]);
  const clientHello = Buffer.concat([
    Buffer.from([0xfe, 0xfd]),
    randomBytes(32),
    Buffer.from([0, 0, 0, 2, 0xcc, 0xa9, 1, 0, 0, 0]),
  ]);
  const common = [
    record(21, 0, seq, FATAL_ALERT),
    record(22, 0, seq, randomBytes(1 + randomInt(60))),
    record(22, 0, seq, handshake(11, 2, randomBytes(40))),
  ];
  return toDialer
    ? [
        ...common,
        record(22, 0, seq, handshake(3, 0, hvr)),
        record(22, 0, seq, handshake(2, 1, serverHello)),
      ]
    : [...common, record(22, 0, seq, handshake(1, 1, clientHello))];
}

/**
 * Inject the forgeries at both ends, with the other end's source address,
 * at every turn of the event loop (the in-memory network delivers one hop
 * per turn, so every step of a handshake meets them), cycling the record
 * number through 0 to 15.
 */
function attack(
  net: MemoryNetwork,
  a: { host: string; port: number },
  b: { host: string; port: number },
): () => number {
  let sent = 0;
  let running = true;
  const burst = (): void => {
    if (!running) return;
    const seq = sent % 16;
    for (const d of forgeries(true, seq)) net.deliver(b.host, b.port, a.host, a.port, d);
    for (const d of forgeries(false, seq)) net.deliver(a.host, a.port, b.host, b.port, d);
    sent += 9;
    setImmediate(burst);
  };
  setImmediate(burst);
  return () => {
    running = false;
    return sent;
  };
}

test('forged epoch-0 records during handshakes: 10 of 10 dials still succeed', async () => {
  let ok = 0;
  let forged = 0;
  for (let i = 0; i < 10; i += 1) {
    const net = new MemoryNetwork();
    const dialerAt = { host: `10.0.20.${2 * i + 2}`, port: 40000 };
    const listenerAt = { host: `10.0.20.${2 * i + 1}`, port: 7000 };
    const listener = await side(net, listenerAt.host, listenerAt.port, true);
    const dialer = await side(net, dialerAt.host, dialerAt.port, false);
    const stop = attack(net, dialerAt, listenerAt);
    // Not persistent, as a relay extends: one aborted handshake ends the dial.
    dialer.ep.dial(listenerAt.host, listenerAt.port, listener.id, { persistent: false });
    try {
      await waitFor('link up', () => dialer.up.length === 1 && listener.up.length === 1, 4000, 5);
      ok += 1;
    } catch {
      // counted below
    }
    const n = stop();
    assert.ok(n >= 9 * 4, `dial ${i}: only ${n} forged datagrams while it ran`);
    forged += n;
    dialer.ep.stop();
    listener.ep.stop();
  }
  assert.ok(forged >= 10 * 9 * 4, `the attack ran (${forged} forged datagrams)`);
  assert.equal(ok, 10, `${ok} of 10 dials came up under the spoofing`);
});

test('an established link survives forged datagrams of every kind from its peer address', async () => {
  const net = new MemoryNetwork();
  const at = { host: '10.0.21.1', port: 7000 };
  const dialerAt = { host: '10.0.21.2', port: 40000 };
  const listener = await side(net, at.host, at.port, true);
  const dialer = await side(net, dialerAt.host, dialerAt.port, false);
  dialer.ep.dial(at.host, at.port, listener.id);
  await waitFor('up', () => dialer.up.length === 1 && listener.up.length === 1, 5000, 5);
  const garbage: Buffer[] = [];
  for (let i = 0; i < 300; i += 1) {
    const seq = randomInt(2 ** 40);
    garbage.push(
      record(21, 0, seq % 16, FATAL_ALERT),
      record(21, 1, seq, FATAL_ALERT), // too short for a tag: dropped by the framing check
      record(21, 1, seq, randomBytes(18)), // a forged protected alert
      record(23, 1, seq, randomBytes(16 + randomInt(100))),
      record(23, 1, i, randomBytes(40)),
      record(22, 0, i % 16, handshake(1, 0, randomBytes(60))),
      record(22, 1, seq, randomBytes(30)),
      record(20, 0, seq % 16, Buffer.from([1])),
      randomBytes(1 + randomInt(200)),
    );
  }
  for (const d of garbage) {
    net.deliver(at.host, at.port, dialerAt.host, dialerAt.port, d);
    net.deliver(dialerAt.host, dialerAt.port, at.host, at.port, d);
  }
  await waitFor(
    'forgeries delivered',
    () => listener.ep.counters.rxDatagrams >= garbage.length,
    5000,
    5,
  );
  assert.deepEqual([dialer.down, listener.down], [[], []], 'no link went down');
  const msg = Buffer.from([MSG_DATA, 1, 2, 3]);
  const packed = Buffer.concat([Buffer.from([0, msg.length]), msg]);
  assert.ok(dialer.ep.sendMessages(dialer.up[0] as LinkPeer, packed, packed.length, 1));
  await waitFor('data still crosses', () => listener.data.length === 1, 2000, 5);
  assert.equal(listener.ep.peers.size, 1);
});
