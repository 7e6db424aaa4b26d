/**
 * The exit's side of a circuit: the policy (and the ICMP quote and
 * embedded-IPv4 readers under it) on arbitrary bytes, and the exit handler
 * fed arbitrary relay messages on a circuit that holds a lease.
 *
 * Invariants: nothing throws; a verdict does not depend on where the
 * packet sits in its buffer; an accepted ICMP error quotes a packet from
 * its destination to its source; every packet the handler writes to its
 * device has the session's leased source and was accepted by the policy.
 */
import { AddressPool } from '../../../exit/address-pool.js';
import { ExitHandler } from '../../../exit/exit-node.js';
import { ExitPolicy, parseAllowList } from '../../../exit/policy.js';
import type { RelayCircuit, RelayNode } from '../../../relay/relay-node.js';
import { LEASE_BODY_BYTES, Relay } from '../../../src/circuit/cells.js';
import { parseCidr } from '../../../src/net/cidr.js';
import {
  checkIcmp4,
  checkIcmp6,
  embeddedIpv4,
  ICMP_OWN_QUOTE,
} from '../../../src/net/ip-packet.js';
import { MemoryDevice } from '../../../src/tun/device.js';
import { manualTime } from '../../helpers/manual-clock.js';
import type { Rng } from '../rng.js';
import { check, type FuzzTarget } from '../target.js';

const LEASE_V4 = Buffer.from([10, 200, 0, 2]);
const PEER_V4 = Buffer.from([198, 51, 100, 10]);
const LEASE_V6 = parseCidr('fd70::2/128').address;
const PEER_V6 = parseCidr('2001:db8::10/128').address;

function v4(proto: number, body: Buffer, src = LEASE_V4, dst = PEER_V4): Buffer {
  const h = Buffer.alloc(20);
  h[0] = 0x45;
  h.writeUInt16BE(20 + body.length, 2);
  h[8] = 64;
  h[9] = proto;
  src.copy(h, 12);
  dst.copy(h, 16);
  return Buffer.concat([h, body]);
}

function v6(next: number, body: Buffer, src = LEASE_V6, dst = PEER_V6): Buffer {
  const h = Buffer.alloc(40);
  h[0] = 0x60;
  h.writeUInt16BE(body.length, 4);
  h[6] = next;
  h[7] = 64;
  src.copy(h, 8);
  dst.copy(h, 24);
  return Buffer.concat([h, body]);
}

const udp = (dport: number) => Buffer.from([0x9c, 0x40, dport >> 8, dport & 0xff, 0, 16, 0, 0]);
const icmpHead = (type: number, code: number) => Buffer.from([type, code, 0, 0, 0, 0, 5, 0x78]);

/** Valid packets of each kind the policy tells apart. */
function packetSeeds(): Buffer[] {
  const own4 = v4(17, udp(40000), PEER_V4, LEASE_V4);
  const own6 = v6(17, udp(40000), PEER_V6, LEASE_V6);
  return [
    v4(17, udp(443)),
    v4(6, Buffer.concat([udp(25), Buffer.alloc(12)])),
    v4(1, Buffer.concat([icmpHead(8, 0), Buffer.alloc(16)])),
    v4(1, Buffer.concat([icmpHead(3, 3), own4])),
    v4(1, Buffer.concat([icmpHead(3, 4), own4])),
    v4(
      1,
      Buffer.concat([icmpHead(11, 0), v4(17, udp(40000), PEER_V4, Buffer.from([10, 200, 0, 3]))]),
    ),
    v6(17, udp(443)),
    v6(58, Buffer.concat([icmpHead(128, 0), Buffer.alloc(16)])),
    v6(58, Buffer.concat([icmpHead(1, 4), own6])),
    v6(58, Buffer.concat([icmpHead(2, 0), own6])),
    v6(17, udp(443), LEASE_V6, parseCidr('64:ff9b::a00:1/128').address),
    v6(17, udp(443), LEASE_V6, parseCidr('2002:7f00:1::1/128').address),
    v6(17, udp(443), LEASE_V6, parseCidr('2001:0:c000:22d::f5ff:fffe/128').address),
  ];
}

function randomPacket(rng: Rng): Buffer {
  const seeds = packetSeeds();
  const p = Buffer.from(seeds[rng.below(seeds.length)] as Buffer);
  for (let k = rng.below(4); k > 0; k -= 1) p[rng.below(p.length)] = rng.below(256);
  return p;
}

const policy = new ExitPolicy({
  allow: parseAllowList(['10.7.0.0/16']),
  ownNetworks: [parseCidr('203.0.113.9/32'), parseCidr('10.200.0.1/16')],
});

let accepted = 0;
let rejected = 0;

export const exitPolicyTarget: FuzzTarget = {
  name: 'exit/policy',
  seeds: packetSeeds,
  run(input) {
    const v = policy.decide(input, 0, input.length);
    check(v.verdict === 'accept' || typeof v.reason === 'string', 'verdict without a reason');
    // The same bytes at an offset, with other bytes around them.
    const pad = 1 + (input.length % 7);
    const big = Buffer.concat([Buffer.alloc(pad, 0x45), input, Buffer.alloc(9, 0x60)]);
    const w = policy.decide(big, pad, input.length);
    check(JSON.stringify(v) === JSON.stringify(w), 'verdict depends on the offset');
    if (input.length > 0) policy.decide(input, 0, input.length - 1);
    // The readers under it, on any window (they never read outside it).
    if (input.length >= 16) {
      embeddedIpv4(input, 0, 0);
      embeddedIpv4(input, 0, 1);
    }
    if (input.length >= 40) {
      const e = Math.min(input.length, 20 + input.length / 2);
      checkIcmp4(input, 0, Math.floor(e), 20, false);
      checkIcmp6(input, 0, input.length, 40, false);
    }
    // An accepted ICMP error (outer header only, no options) quotes a packet
    // that came from its destination to its source.
    if (v.verdict === 'accept' && input.length >= 28) {
      const version = (input[0] as number) >> 4;
      if (version === 4 && input[0] === 0x45 && input[9] === 1) {
        const type = input[20] as number;
        const fragment = (input.readUInt16BE(6) & 0x3fff) !== 0;
        if (!fragment && [3, 4, 11, 12].includes(type)) {
          const end = Math.min(input.length, input.readUInt16BE(2));
          check(checkIcmp4(input, 0, end, 20, false) === ICMP_OWN_QUOTE, 'foreign error passed');
          check(
            input.subarray(40, 44).equals(input.subarray(16, 20)),
            'quote source != destination',
          );
          check(
            input.subarray(44, 48).equals(input.subarray(12, 16)),
            'quote destination != source',
          );
        }
      }
      if (version === 6 && input.length >= 96 && input[6] === 58 && (input[40] as number) < 128) {
        check(input.subarray(56, 72).equals(input.subarray(24, 40)), 'quote source != destination');
        check(input.subarray(72, 88).equals(input.subarray(8, 24)), 'quote destination != source');
      }
    }
    if (v.verdict === 'accept') accepted += 1;
    else rejected += 1;
    return v.verdict === 'accept';
  },
  generate: randomPacket,
  maxLength: 1400,
  stats: () => `accepted ${accepted}, rejected ${rejected}`,
};

// --- the handler ----------------------------------------------------------------

interface FakeRelay {
  counters: { drops: { badRelayMessage: number } };
  outbox: { flush(): void };
  backward: number;
  sendBackward(circ: RelayCircuit, command: number, buf: Buffer, off?: number, len?: number): void;
}

const fakeRelay: FakeRelay = {
  counters: { drops: { badRelayMessage: 0 } },
  outbox: { flush() {} },
  backward: 0,
  sendBackward() {
    this.backward += 1;
  },
};
const device = new MemoryDevice('fuzz0');
const handler = new ExitHandler(
  fakeRelay as unknown as RelayNode,
  device,
  new AddressPool(parseCidr('10.200.0.1/24'), parseCidr('fd70::1/64')),
  policy,
  { clock: manualTime(() => 0) },
);
device.start = () => {};
const SESSION = Buffer.alloc(LEASE_BODY_BYTES, 0x11);

/**
 * Input: a sequence of relay messages, each [command u8][len u16][body],
 * on one circuit that first takes a lease (whose addresses are the ones
 * above); then the exit's device is flushed and what it wrote checked.
 */
export const exitHandlerTarget: FuzzTarget = {
  name: 'exit/handler',
  seeds: () => {
    const msg = (command: number, body: Buffer) => {
      const h = Buffer.alloc(3);
      h[0] = command;
      h.writeUInt16BE(body.length, 1);
      return Buffer.concat([h, body]);
    };
    return [
      Buffer.concat(packetSeeds().map((p) => msg(Relay.data, p))),
      Buffer.concat([msg(Relay.ping, Buffer.alloc(8)), msg(Relay.lease, SESSION)]),
      msg(Relay.lease, Buffer.alloc(LEASE_BODY_BYTES, 0x22)),
    ];
  },
  run(input) {
    const circ = { exitContext: undefined } as unknown as RelayCircuit;
    handler.onRelayMessage(circ, Relay.lease, SESSION, 0, SESSION.length);
    let o = 0;
    while (o + 3 <= input.length) {
      const command = input[o] as number;
      const len = Math.min(input.readUInt16BE(o + 1), input.length - o - 3);
      handler.onRelayMessage(circ, command, input, o + 3, len);
      o += 3 + len;
    }
    handler.flush();
    for (const p of device.written.splice(0)) {
      const version = (p[0] as number) >> 4;
      const src = version === 4 ? p.subarray(12, 16) : p.subarray(8, 24);
      check(src.equals(version === 4 ? LEASE_V4 : LEASE_V6), 'a packet left with a foreign source');
      check(policy.decide(p, 0, p.length).verdict === 'accept', 'a rejected packet was written');
    }
    handler.onCircuitClosed(circ);
    return true;
  },
  maxLength: 1500,
  stats: () =>
    `written ${handler.counters.toInternet}, policy drops ${handler.counters.drops.policy}`,
};
