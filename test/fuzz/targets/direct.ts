/**
 * Direct mode on top of a link: what an authenticated peer controls, the
 * inner addresses it claims in its AUTH and the IP packets it sends. The
 * listener must admit exactly the valid claims inside its prefixes and
 * pass to its device exactly the well-formed packets from the claimed
 * source.
 */
import { decodeAddresses, encodeAddresses } from '../../../src/direct/attributes.js';
import { DirectTunnel, TUNNEL_MTU } from '../../../src/direct/tunnel.js';
import { AUTH_MAX_ATTRIBUTE_BYTES } from '../../../src/link/messages.js';
import { addressKey, ipv4Source, ipv6Source, ipVersion } from '../../../src/net/ip-packet.js';
import { cidrContains, parseCidr, type Cidr } from '../../../src/net/cidr.js';
import { MemoryDevice } from '../../../src/tun/device.js';
import type { Rng } from '../rng.js';
import { check, type FuzzTarget } from '../target.js';
import {
  Clock,
  dataMessage,
  fixtureIdentities,
  packMessage,
  QueueNetwork,
  side,
  type Side,
  upLink,
} from './link-fixture.js';

interface Fixture {
  net: QueueNetwork;
  tunnel: DirectTunnel;
  device: MemoryDevice;
  own: Cidr[];
  tunnelAddr: { host: string; port: number };
  dialer: Side;
}

async function fixture(base: number, claim: () => Buffer): Promise<Fixture> {
  const net = new QueueNetwork();
  const [lid, did] = fixtureIdentities();
  const device = new MemoryDevice();
  const own = [parseCidr(`10.${base}.9.1/24`), parseCidr(`fd${base}::1/64`)];
  const tunnelAddr = { host: `10.${base}.0.1`, port: 7000 };
  const tunnel = new DirectTunnel({
    identity: lid,
    transport: net.transport(tunnelAddr.host, tunnelAddr.port),
    device,
    addresses: own,
    mode: { kind: 'listen', allowedIds: null },
  });
  await tunnel.start();
  const dialer = await side(net, { host: `10.${base}.0.2`, port: 40000 }, did, new Clock(), {
    attributes: claim,
  });
  return { net, tunnel, device, own, tunnelAddr, dialer };
}

function listenerUp(f: Fixture): number {
  return f.tunnel.endpoint.upPeers().length;
}

// --- packets from an authenticated peer -------------------------------------------

let fromLink: Fixture | undefined;
let claimed: Cidr[] = [];
const packetStats = { written: 0, badPacket: 0, badSource: 0 };

function ipPacket(rng: Rng, src: Buffer, dst: Buffer): Buffer {
  const v6 = src.length === 16;
  const p = rng.bytes((v6 ? 40 : 20) + rng.below(80));
  if (v6) {
    p[0] = 0x60;
    src.copy(p, 8);
    dst.copy(p, 24);
  } else {
    p[0] = 0x45;
    src.copy(p, 12);
    dst.copy(p, 16);
  }
  return p;
}

export const fromLinkTarget: FuzzTarget = {
  name: 'direct/packets-from-peer',
  async seeds() {
    claimed = [parseCidr('10.64.9.2/32'), parseCidr('fd64::2/128')];
    const f = await fixture(64, () => encodeAddresses(claimed));
    fromLink = f;
    f.dialer.ep.dial(f.tunnelAddr.host, f.tunnelAddr.port, fixtureIdentities()[0].id);
    f.net.drain();
    check(listenerUp(f) === 1, 'fixture tunnel link did not come up');
    const mk = (src: string, dst: string) => {
      const s = parseCidr(src).address;
      const d = parseCidr(dst).address;
      const p = Buffer.alloc(s.length === 4 ? 28 : 48);
      p[0] = s.length === 4 ? 0x45 : 0x60;
      s.copy(p, s.length === 4 ? 12 : 8);
      d.copy(p, s.length === 4 ? 16 : 24);
      return p;
    };
    return [
      mk('10.64.9.2/32', '10.64.9.1/32'),
      mk('fd64::2/128', 'fd64::1/128'),
      mk('10.64.9.3/32', '10.64.9.1/32'),
      mk('fd64::3/128', 'fd64::1/128'),
    ];
  },
  run(input) {
    const f = fromLink as Fixture;
    const link = upLink(f.dialer, f.tunnelAddr);
    check(link, 'fixture link is down');
    const packet = input.length > TUNNEL_MTU ? input.subarray(0, TUNNEL_MTU) : input;
    const c = f.tunnel.counters;
    const before = {
      written: f.device.written.length,
      bad: c.drops.badPacket,
      src: c.drops.badSource,
    };
    const [b, len] = packMessage(dataMessage(packet));
    check(f.dialer.ep.sendMessages(link, b, len, 1), 'sendMessages refused');
    f.net.drain();
    const written = f.device.written.slice(before.written);
    f.device.written.length = 0;
    const v = ipVersion(packet, 0, packet.length);
    const fromClaim =
      v === 4
        ? claimed.some((a) => a.family === 4 && addressKey(a.address) === ipv4Source(packet, 0))
        : v === 6
          ? claimed.some((a) => a.family === 6 && addressKey(a.address) === ipv6Source(packet, 0))
          : false;
    if (fromClaim) {
      packetStats.written += 1;
      check(
        written.length === 1 && written[0]?.equals(packet),
        'a valid packet from the claimed source was not written as sent',
      );
    } else {
      check(
        written.length === 0,
        `a packet (version ${v}) not from the claimed source reached the device`,
      );
      if (v === 0) {
        packetStats.badPacket += 1;
        check(c.drops.badPacket === before.bad + 1, 'malformed packet not counted');
      } else {
        packetStats.badSource += 1;
        check(c.drops.badSource === before.src + 1, 'spoofed source not counted');
      }
    }
    return fromClaim;
  },
  generate(rng) {
    const own = rng.pick(claimed);
    const src = rng.chance(0.7) ? own.address : rng.bytes(own.address.length);
    return ipPacket(rng, src, rng.bytes(own.address.length));
  },
  maxLength: TUNNEL_MTU + 8,
  stats: () =>
    `written ${packetStats.written}, badPacket ${packetStats.badPacket}, badSource ${packetStats.badSource}`,
  teardown() {
    fromLink?.dialer.ep.stop();
    fromLink?.tunnel.stop();
  },
};

// --- address claims in AUTH ------------------------------------------------------

let admission: Fixture | undefined;
let claim: Buffer = Buffer.alloc(0);
const admitStats = { admitted: 0, refused: 0 };

function expectAdmit(f: Fixture, attrs: Buffer): boolean {
  if (attrs.length > AUTH_MAX_ATTRIBUTE_BYTES) return false;
  const list = decodeAddresses(attrs);
  if (!list || list.length === 0) return false;
  const ownKeys = new Set(f.own.map((a) => addressKey(a.address)));
  for (const c of list) {
    if (!f.own.some((o) => cidrContains(o, c.address))) return false;
    if (ownKeys.has(addressKey(c.address))) return false;
  }
  return true;
}

export const admissionTarget: FuzzTarget = {
  name: 'direct/address-claims',
  async seeds() {
    admission = await fixture(65, () => claim);
    return [
      encodeAddresses([parseCidr('10.65.9.2/32')]),
      encodeAddresses([parseCidr('10.65.9.2/24'), parseCidr('fd65::2/64')]),
      encodeAddresses([parseCidr('10.65.9.1/32')]),
      encodeAddresses([parseCidr('10.66.9.2/32')]),
      encodeAddresses([]),
      encodeAddresses([parseCidr('10.65.9.2/32'), parseCidr('10.65.9.2/32')]),
    ];
  },
  async run(input) {
    const f = admission as Fixture;
    claim = input;
    await f.dialer.ep.start();
    f.dialer.ep.dial(f.tunnelAddr.host, f.tunnelAddr.port, fixtureIdentities()[0].id);
    f.net.drain();
    const expected = expectAdmit(f, input);
    const up = listenerUp(f);
    try {
      check(
        up === (expected ? 1 : 0),
        `claim ${expected ? 'refused' : 'admitted'} wrongly (${up} up)`,
      );
      if (expected) {
        admitStats.admitted += 1;
        const list = decodeAddresses(input) ?? [];
        const routes = (f.tunnel.describe() as { routes: { address: string }[] }).routes;
        const want = new Set(list.map((c) => String(addressKey(c.address))));
        check(
          routes.length === want.size && routes.every((r) => want.has(r.address)),
          'routes do not match the claim',
        );
      } else {
        admitStats.refused += 1;
        check(
          upLink(f.dialer, f.tunnelAddr) === undefined,
          'the dialer thinks a refused link is up',
        );
      }
    } finally {
      f.dialer.ep.stop();
      f.net.drain();
    }
    check(f.tunnel.endpoint.peers.size === 0, 'the listener kept a link the dialer closed');
    const routes = (f.tunnel.describe() as { routes: unknown[] }).routes;
    check(routes.length === 0, 'routes outlived the link');
    return expected;
  },
  generate(rng) {
    const n = rng.range(0, 3);
    const list: Cidr[] = [];
    for (let i = 0; i < n; i += 1) {
      const v6 = rng.chance(0.5);
      const text = v6
        ? `fd${rng.chance(0.8) ? 65 : 66}::${rng.below(0xffff).toString(16)}/${rng.range(64, 128)}`
        : `10.${rng.chance(0.8) ? 65 : 66}.9.${rng.below(256)}/${rng.range(16, 32)}`;
      list.push(parseCidr(text));
    }
    return encodeAddresses(list);
  },
  fields: (b) => (b.length ? [{ offset: 0, size: 1, value: b[0] as number }] : []),
  maxLength: 600,
  weight: 0.75,
  stats: () => `admitted ${admitStats.admitted}, refused ${admitStats.refused}`,
  teardown() {
    admission?.dialer.ep.stop();
    admission?.tunnel.stop();
  },
};
