// The exit policy on what a packet embeds (protocol 9.6): ICMP and ICMPv6
// errors are judged by the packet they quote, and IPv6 addresses that stand
// for an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) by that
// address. Each test crafts the packet an attacking client would send.
import { manualTime } from '../helpers/manual-clock.js';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AddressPool } from '../../exit/address-pool.js';
import { ExitHandler } from '../../exit/exit-node.js';
import { ExitPolicy, parseAllowList, parsePolicyText, type Verdict } from '../../exit/policy.js';
import type { RelayCircuit, RelayNode } from '../../relay/relay-node.js';
import { LEASE_BODY_BYTES, Relay } from '../../src/circuit/cells.js';
import { parseCidr, parseIp } from '../../src/net/cidr.js';
import {
  checkIcmp4,
  checkIcmp6,
  embeddedIpv4,
  ICMP_BAD_QUOTE,
  ICMP_FOREIGN_QUOTE,
  ICMP_NOT_ERROR,
  ICMP_OWN_QUOTE,
} from '../../src/net/ip-packet.js';
import { MemoryDevice } from '../../src/tun/device.js';

const TCP = 6;
const UDP = 17;
const ICMP = 1;
const ICMP6 = 58;

function ip(text: string): Buffer {
  const b = parseIp(text);
  assert.ok(b, text);
  return b;
}

/** An IPv4 packet; `frag` is the flags/fragment-offset word. */
function v4(src: string, dst: string, proto: number, body: Buffer, frag = 0, ihl = 5): Buffer {
  const h = Buffer.alloc(ihl * 4, 1);
  h[0] = 0x40 | ihl;
  h[1] = 0;
  h.writeUInt16BE(h.length + body.length, 2);
  h.writeUInt32BE(0, 4);
  h.writeUInt16BE(frag, 6);
  h[8] = 64;
  h[9] = proto;
  h.writeUInt16BE(0, 10);
  ip(src).copy(h, 12);
  ip(dst).copy(h, 16);
  return Buffer.concat([h, body]);
}

/** An IPv6 packet, optionally behind extension headers `ext` (codes, 8 bytes each). */
function v6(src: string, dst: string, next: number, body: Buffer, ext: number[] = []): Buffer {
  let payload = body;
  let nh = next;
  for (let i = ext.length - 1; i >= 0; i -= 1) {
    const e = Buffer.alloc(8);
    e[0] = nh;
    if (ext[i] === 44) e.writeUInt16BE(1, 2); // first fragment, more follow
    nh = ext[i] as number;
    payload = Buffer.concat([e, payload]);
  }
  const h = Buffer.alloc(40);
  h[0] = 0x60;
  h.writeUInt16BE(payload.length, 4);
  h[6] = nh;
  h[7] = 64;
  ip(src).copy(h, 8);
  ip(dst).copy(h, 24);
  return Buffer.concat([h, payload]);
}

function udp(sport: number, dport: number, data = 8): Buffer {
  const b = Buffer.alloc(8 + data, 0x5a);
  b.writeUInt16BE(sport, 0);
  b.writeUInt16BE(dport, 2);
  b.writeUInt16BE(8 + data, 4);
  b.writeUInt16BE(0, 6);
  return b;
}

/** An ICMP(v6) message: type, code, 4 bytes of "rest" (MTU etc.), then `data`. */
function icmp(type: number, code: number, data: Buffer, rest = 0): Buffer {
  const b = Buffer.alloc(8);
  b[0] = type;
  b[1] = code;
  b.writeUInt32BE(rest >>> 0, 4);
  return Buffer.concat([b, data]);
}

function decide(policy: ExitPolicy, packet: Buffer): Verdict {
  // At an offset inside a larger buffer, as the exit does.
  const big = Buffer.alloc(packet.length + 11, 0xee);
  packet.copy(big, 5);
  return policy.decide(big, 5, packet.length);
}

const reason = (v: Verdict) => (v.verdict === 'accept' ? 'accept' : v.reason);

// The scene: two clients of one exit, leases predictable (pool 10.200/16,
// fd70::/64), talking to a public destination D.
const A = '10.200.0.3';
const B = '10.200.0.4';
const D = '198.51.100.10';
const A6 = 'fd70::3';
const B6 = 'fd70::4';
const D6 = '2001:db8:d::10';
const EXIT = '203.0.113.9';

const policy = new ExitPolicy({
  ownNetworks: [parseCidr(`${EXIT}/32`), parseCidr('10.200.0.1/16'), parseCidr('fd70::1/64')],
});

describe('client ICMP errors about another client\u2019s flow', () => {
  // A packet D sent to B (as B received it, after the exit undid the NAT),
  // and one D sent to A: what an honest error of B or A would quote.
  const dToB = v4(D, B, UDP, udp(53, 40000));
  const dToA = v4(D, A, UDP, udp(53, 40000));
  const errors4: [string, number, number, number][] = [
    ['port unreachable', 3, 3, 0],
    ['protocol unreachable', 3, 2, 0],
    ['host unreachable', 3, 1, 0],
    ['fragmentation needed, MTU 1400', 3, 4, 1400],
    ['source quench', 4, 0, 0],
    ['time exceeded', 11, 0, 0],
    ['reassembly time exceeded', 11, 1, 0],
    ['parameter problem', 12, 0, 0],
  ];
  for (const [name, type, code, mtu] of errors4) {
    it(`IPv4 ${name}: quoting B's flow is dropped, quoting A's own is forwarded`, () => {
      const forged = v4(A, D, ICMP, icmp(type, code, dToB, mtu));
      assert.equal(reason(decide(policy, forged)), 'icmp-foreign');
      const honest = v4(A, D, ICMP, icmp(type, code, dToA, mtu));
      assert.equal(reason(decide(policy, honest)), 'accept');
    });
  }

  it('IPv4: every other way of naming a foreign flow is dropped too', () => {
    const cases: [string, Buffer][] = [
      // What B sent to D: as if A had received B's packet.
      ['B -> D', v4(B, D, UDP, udp(40000, 53))],
      // What the exit sent D for B, after NAT: the reply-direction tuple.
      ['exit -> D', v4(EXIT, D, UDP, udp(40000, 53))],
      // A's own packet to D: an error about it goes to A, never from it.
      ['A -> D', v4(A, D, UDP, udp(40000, 53))],
      // From another host than the error's destination.
      ['E -> A', v4('198.51.100.11', A, UDP, udp(53, 40000))],
    ];
    for (const [name, quote] of cases) {
      const p = v4(A, D, ICMP, icmp(3, 3, quote));
      assert.equal(reason(decide(policy, p)), 'icmp-foreign', name);
    }
  });

  const errors6: [string, number, number, number][] = [
    ['port unreachable', 1, 4, 0],
    ['administratively prohibited', 1, 1, 0],
    ['packet too big, MTU 1280', 2, 0, 1280],
    ['packet too big, MTU 1500', 2, 0, 1500],
    ['time exceeded', 3, 0, 0],
    ['parameter problem', 4, 0, 0],
    ['an unassigned error type (100)', 100, 0, 0],
  ];
  const d6ToB = v6(D6, B6, UDP, udp(53, 40000));
  const d6ToA = v6(D6, A6, UDP, udp(53, 40000));
  for (const [name, type, code, mtu] of errors6) {
    it(`IPv6 ${name}: quoting B's flow is dropped, quoting A's own is forwarded`, () => {
      const forged = v6(A6, D6, ICMP6, icmp(type, code, d6ToB, mtu));
      assert.equal(reason(decide(policy, forged)), 'icmp-foreign');
      const honest = v6(A6, D6, ICMP6, icmp(type, code, d6ToA, mtu));
      assert.equal(reason(decide(policy, honest)), 'accept');
      // Extension headers in front of the ICMPv6 header do not hide it.
      const hidden = v6(A6, D6, ICMP6, icmp(type, code, d6ToB, mtu), [0, 60]);
      assert.equal(reason(decide(policy, hidden)), 'icmp-foreign');
    });
  }

  it('path MTU below 1280 is refused even about the sender\u2019s own flow', () => {
    for (const mtu of [0, 68, 552, 1279]) {
      const p4 = v4(A, D, ICMP, icmp(3, 4, dToA, mtu));
      assert.equal(reason(decide(policy, p4)), 'icmp-mtu', `v4 ${mtu}`);
      const p6 = v6(A6, D6, ICMP6, icmp(2, 0, d6ToA, mtu));
      assert.equal(reason(decide(policy, p6)), 'icmp-mtu', `v6 ${mtu}`);
    }
  });

  it('redirects are never forwarded', () => {
    const p = v4(A, D, ICMP, icmp(5, 1, dToA, 0x0a000001));
    assert.equal(reason(decide(policy, p)), 'icmp-redirect');
  });

  it('informational ICMP passes as before (echo, echo reply)', () => {
    assert.equal(reason(decide(policy, v4(A, D, ICMP, icmp(8, 0, Buffer.alloc(56))))), 'accept');
    assert.equal(reason(decide(policy, v4(A, D, ICMP, icmp(0, 0, Buffer.alloc(56))))), 'accept');
    assert.equal(
      reason(decide(policy, v6(A6, D6, ICMP6, icmp(128, 0, Buffer.alloc(56))))),
      'accept',
    );
    assert.equal(
      reason(decide(policy, v6(A6, D6, ICMP6, icmp(129, 0, Buffer.alloc(56))))),
      'accept',
    );
  });
});

describe('truncated, malformed, nested and fragmented quotes', () => {
  const dToA = v4(D, A, UDP, udp(53, 40000));
  it('IPv4: a quote must hold the whole quoted header and 8 bytes more', () => {
    // Header + 8 bytes (RFC 792's minimum) is enough, with IP options too.
    assert.equal(
      reason(decide(policy, v4(A, D, ICMP, icmp(3, 3, dToA.subarray(0, 28))))),
      'accept',
    );
    const withOptions = v4(D, A, UDP, udp(53, 40000), 0, 7);
    assert.equal(
      reason(decide(policy, v4(A, D, ICMP, icmp(3, 3, withOptions.subarray(0, 36))))),
      'accept',
    );
    for (const keep of [0, 1, 12, 19, 20, 24, 27]) {
      const p = v4(A, D, ICMP, icmp(3, 3, dToA.subarray(0, keep)));
      assert.equal(reason(decide(policy, p)), 'icmp-malformed', `quote of ${keep} bytes`);
    }
    assert.equal(
      reason(decide(policy, v4(A, D, ICMP, icmp(3, 3, withOptions.subarray(0, 35))))),
      'icmp-malformed',
    );
    // Not IPv4, a header length below 20, a total length below the header.
    const bad = [Buffer.from(dToA), Buffer.from(dToA), Buffer.from(dToA)];
    (bad[0] as Buffer)[0] = 0x65;
    (bad[1] as Buffer)[0] = 0x44;
    (bad[2] as Buffer).writeUInt16BE(19, 2);
    for (const q of bad) {
      assert.equal(reason(decide(policy, v4(A, D, ICMP, icmp(3, 3, q)))), 'icmp-malformed');
    }
    // Fewer than 8 bytes of ICMP header: malformed whatever the type.
    const short = v4(A, D, ICMP, Buffer.from([3, 3, 0, 0]));
    assert.equal(reason(decide(policy, short)), 'icmp-malformed');
  });

  it('IPv4: errors about a later fragment or about an ICMP error are dropped', () => {
    const later = v4(D, A, UDP, Buffer.alloc(16), 100);
    assert.equal(reason(decide(policy, v4(A, D, ICMP, icmp(11, 1, later)))), 'icmp-malformed');
    const nested = v4(D, A, ICMP, icmp(3, 3, v4(A, D, UDP, udp(1, 2))));
    assert.equal(reason(decide(policy, v4(A, D, ICMP, icmp(3, 3, nested)))), 'icmp-malformed');
    // About an echo reply A received: fine.
    const echo = v4(D, A, ICMP, icmp(0, 0, Buffer.alloc(8)));
    assert.equal(reason(decide(policy, v4(A, D, ICMP, icmp(12, 0, echo)))), 'accept');
  });

  it('IPv4: a fragmented error is dropped at its first fragment', () => {
    // The first fragment could carry just the ICMP header and leave the
    // quote to a later fragment the policy cannot read.
    const first = v4(A, D, ICMP, icmp(3, 3, dToA.subarray(0, 8)), 0x2000);
    assert.equal(reason(decide(policy, first)), 'icmp-malformed');
    const whole = v4(A, D, ICMP, icmp(3, 3, dToA), 0x2000);
    assert.equal(reason(decide(policy, whole)), 'icmp-malformed');
    // An echo request may still be fragmented.
    const echo = v4(A, D, ICMP, icmp(8, 0, Buffer.alloc(64)), 0x2000);
    assert.equal(reason(decide(policy, echo)), 'accept');
  });

  const d6ToA = v6(D6, A6, UDP, udp(53, 40000));
  it('IPv6: a quote must hold the 40-byte header and 8 bytes more, and be IPv6', () => {
    assert.equal(
      reason(decide(policy, v6(A6, D6, ICMP6, icmp(1, 4, d6ToA.subarray(0, 48))))),
      'accept',
    );
    for (const keep of [0, 8, 39, 40, 47]) {
      const p = v6(A6, D6, ICMP6, icmp(1, 4, d6ToA.subarray(0, keep)));
      assert.equal(reason(decide(policy, p)), 'icmp-malformed', `quote of ${keep} bytes`);
    }
    const notV6 = Buffer.from(d6ToA);
    notV6[0] = 0x45;
    assert.equal(reason(decide(policy, v6(A6, D6, ICMP6, icmp(1, 4, notV6)))), 'icmp-malformed');
    const short = v6(A6, D6, ICMP6, Buffer.from([1, 4, 0, 0]));
    assert.equal(reason(decide(policy, short)), 'icmp-malformed');
  });

  it('IPv6: errors about an ICMPv6 error are dropped, behind extension headers too', () => {
    const inner = icmp(1, 4, v6(A6, D6, UDP, udp(1, 2)));
    const nested = v6(D6, A6, ICMP6, inner);
    assert.equal(reason(decide(policy, v6(A6, D6, ICMP6, icmp(1, 4, nested)))), 'icmp-malformed');
    const behind = v6(D6, A6, ICMP6, inner, [60]);
    assert.equal(reason(decide(policy, v6(A6, D6, ICMP6, icmp(4, 1, behind)))), 'icmp-malformed');
    const aboutEcho = v6(D6, A6, ICMP6, icmp(129, 0, Buffer.alloc(8)));
    assert.equal(reason(decide(policy, v6(A6, D6, ICMP6, icmp(4, 1, aboutEcho)))), 'accept');
  });

  it('IPv6: a fragmented error is dropped', () => {
    const p = v6(A6, D6, ICMP6, icmp(1, 4, d6ToA), [44]);
    assert.equal(reason(decide(policy, p)), 'icmp-malformed');
    const echo = v6(A6, D6, ICMP6, icmp(128, 0, Buffer.alloc(64)), [44]);
    assert.equal(reason(decide(policy, echo)), 'accept');
  });

  it('the quote checks read only inside the outer packet', () => {
    // The bytes after the packet's end would make the quote complete and own.
    const full = v4(A, D, ICMP, icmp(3, 3, dToA));
    const cut = Buffer.from(full);
    cut.writeUInt16BE(20 + 8 + 20 + 4, 2); // total length stops inside the quote
    assert.equal(reason(decide(policy, cut)), 'icmp-malformed');
    assert.equal(checkIcmp4(full, 0, full.length, 20, false), ICMP_OWN_QUOTE);
    assert.equal(checkIcmp4(full, 0, full.length - 1, 20, false), ICMP_OWN_QUOTE);
    assert.equal(checkIcmp4(full, 0, 20 + 8 + 27, 20, false), ICMP_BAD_QUOTE);
    const f6 = v6(A6, D6, ICMP6, icmp(1, 4, d6ToA));
    assert.equal(checkIcmp6(f6, 0, f6.length, 40, false), ICMP_OWN_QUOTE);
    assert.equal(checkIcmp6(f6, 0, 40 + 8 + 47, 40, false), ICMP_BAD_QUOTE);
    const other = v6(A6, D6, ICMP6, icmp(1, 4, v6(D6, B6, UDP, udp(1, 2))));
    assert.equal(checkIcmp6(other, 0, other.length, 40, false), ICMP_FOREIGN_QUOTE);
    assert.equal(checkIcmp6(f6.fill(0x80, 40, 41), 0, f6.length, 40, false), ICMP_NOT_ERROR);
  });
});

describe('IPv6 addresses that stand for IPv4 addresses', () => {
  const hex = (v4text: string) => ip(v4text).toString('hex');
  const groups = (h: string) => `${h.slice(0, 4)}:${h.slice(4, 8)}`;
  const inverted = (v4text: string) =>
    Buffer.from(ip(v4text).map((x) => ~x & 0xff)).toString('hex');
  /** Every form of an IPv4 address as an IPv6 destination, by name. */
  function forms(v4text: string): Record<string, string> {
    return {
      mapped: `::ffff:${v4text}`,
      compatible: `::${v4text}`,
      nat64: `64:ff9b::${v4text}`,
      '6to4': `2002:${groups(hex(v4text))}::1`,
      'teredo client': `2001:0:${groups(hex('192.0.2.45'))}:0:0:${groups(inverted(v4text))}`,
      'teredo server': `2001:0:${groups(hex(v4text))}:0:0:${groups(inverted('192.0.2.46'))}`,
    };
  }

  it('reads the embedded address of each form', () => {
    for (const [name, text] of Object.entries(forms('10.1.2.3'))) {
      const b = ip(text);
      const got = [embeddedIpv4(b, 0, 0), embeddedIpv4(b, 0, 1)];
      const want = ip('10.1.2.3').readUInt32BE(0);
      assert.ok(got.includes(want), `${name} ${text}: ${got.join(',')}`);
    }
    for (const text of ['2001:db8::1', '2003::1', '64:ff9b:0:1::1', 'fe80::1']) {
      assert.equal(embeddedIpv4(ip(text), 0, 0), -1, text);
    }
  });

  const cases: [string, string][] = [
    ['127.0.0.1', 'loopback'],
    ['127.1.2.3', 'loopback'],
    [EXIT, 'own-address'],
    ['10.200.0.4', 'own-address'], // another client's lease
    ['10.0.0.1', 'private'],
    ['192.168.1.1', 'private'],
    ['172.16.0.1', 'private'],
    ['100.64.0.1', 'private'],
    ['0.0.0.0', 'private'],
    ['169.254.169.254', 'link-local'],
    ['224.0.0.1', 'multicast'],
  ];
  for (const [v4text, want] of cases) {
    it(`every form of ${v4text} is refused (${want})`, () => {
      for (const [name, text] of Object.entries(forms(v4text))) {
        for (const proto of [UDP, TCP, ICMP6]) {
          const body = proto === ICMP6 ? icmp(128, 0, Buffer.alloc(8)) : udp(40000, 443);
          const v = decide(policy, v6(A6, text, proto, body));
          // Mapped and compatible addresses are private in themselves (they
          // are never routed as IPv6); the IPv4 address still names the
          // hard rejects.
          const expect =
            (name === 'mapped' || name === 'compatible') &&
            want !== 'loopback' &&
            want !== 'own-address'
              ? 'private'
              : want;
          assert.equal(reason(v), expect, `${name} ${text}`);
        }
      }
    });
  }

  it('the routed forms of a public address are forwarded', () => {
    const f = forms('8.8.8.8');
    for (const name of ['nat64', '6to4', 'teredo client', 'teredo server']) {
      assert.equal(reason(decide(policy, v6(A6, f[name] as string, UDP, udp(1, 443)))), 'accept');
    }
    assert.equal(reason(decide(policy, v6(A6, f.mapped as string, UDP, udp(1, 443)))), 'private');
  });

  it("NAT64's local-use prefix 64:ff9b:1::/48 is refused, whatever --allow says", () => {
    const open = new ExitPolicy({ allow: parseAllowList(['64:ff9b:1::/48', '0.0.0.0/0']) });
    for (const text of ['64:ff9b:1::808:808', '64:ff9b:1:7f00:1::', '64:ff9b:1:ffff::a00:1']) {
      assert.equal(reason(decide(policy, v6(A6, text, UDP, udp(1, 443)))), 'nat64-local', text);
      assert.equal(reason(decide(open, v6(A6, text, UDP, udp(1, 443)))), 'nat64-local', text);
    }
  });

  it('IPv4 rules of the policy file and --allow apply to the embedded address', () => {
    const rules = parsePolicyText('reject 8.8.8.0/24\nreject 1.1.1.1:53', 'test.policy');
    const p = new ExitPolicy({ rules });
    const f = forms('8.8.8.8');
    for (const name of ['nat64', '6to4', 'teredo client', 'teredo server']) {
      assert.equal(reason(decide(p, v6(A6, f[name] as string, UDP, udp(1, 443)))), 'policy', name);
    }
    assert.equal(reason(decide(p, v6(A6, '64:ff9b::1.1.1.1', UDP, udp(1, 53)))), 'policy');
    assert.equal(reason(decide(p, v6(A6, '64:ff9b::1.1.1.1', UDP, udp(1, 443)))), 'accept');
    // --allow opens a private range for its NAT64 form as for itself...
    const a = new ExitPolicy({ allow: parseAllowList(['10.7.0.0/16']) });
    assert.equal(reason(decide(a, v6(A6, '64:ff9b::10.7.0.2', UDP, udp(1, 443)))), 'accept');
    assert.equal(reason(decide(a, v6(A6, '64:ff9b::10.8.0.2', UDP, udp(1, 443)))), 'private');
    // ...but a Teredo address opens only if both its addresses are allowed.
    const teredo = `2001:0:${groups(hex('10.7.0.1'))}:0:0:${groups(inverted('10.8.0.1'))}`;
    assert.equal(reason(decide(a, v6(A6, teredo, UDP, udp(1, 443)))), 'private');
    // And --allow never opens loopback or the exit's own addresses.
    const all = new ExitPolicy({
      allow: parseAllowList(['0.0.0.0/0', '::/0']),
      ownNetworks: [parseCidr(`${EXIT}/32`)],
    });
    for (const v4text of ['127.0.0.1', EXIT]) {
      for (const [name, text] of Object.entries(forms(v4text))) {
        assert.equal(decide(all, v6(A6, text, UDP, udp(1, 443))).verdict, 'reject', name);
      }
    }
  });
});

describe('at the exit handler: two leased clients', () => {
  it("A's forged error about B's flow is dropped and counted; its own is written to the TUN", () => {
    const sent: { command: number; text: string }[] = [];
    const relay = {
      counters: { drops: { badRelayMessage: 0 } },
      outbox: { flush() {} },
      sendBackward(_c: RelayCircuit, command: number, buf: Buffer, off = 0, len?: number) {
        sent.push({ command, text: buf.toString('latin1', off, off + (len ?? buf.length - off)) });
      },
    };
    const device = new MemoryDevice('t0');
    const pool = new AddressPool(parseCidr('10.200.0.1/24'));
    const exit = new ExitHandler(relay as unknown as RelayNode, device, pool, policy, {
      clock: manualTime(() => 5000),
    });
    const circA = { exitContext: undefined } as unknown as RelayCircuit;
    const circB = { exitContext: undefined } as unknown as RelayCircuit;
    const lease = (c: RelayCircuit, key: number) =>
      exit.onRelayMessage(c, Relay.lease, Buffer.alloc(LEASE_BODY_BYTES, key), 0, LEASE_BODY_BYTES);
    lease(circA, 0xa);
    lease(circB, 0xb);
    const grants = sent.filter((m) => m.command === Relay.leaseGrant);
    const leaseOf = (i: number) =>
      [...Buffer.from(grants[i]!.text, 'latin1').subarray(16, 20)].join('.');
    const a = leaseOf(0);
    const b = leaseOf(1);
    assert.notEqual(a, b);
    const data = (c: RelayCircuit, p: Buffer) => exit.onRelayMessage(c, Relay.data, p, 0, p.length);
    // A quotes D's packet to B, and D's packet to A.
    data(circA, v4(a, D, ICMP, icmp(3, 3, v4(D, b, UDP, udp(53, 40000)))));
    data(circA, v4(a, D, ICMP, icmp(3, 4, v4(D, b, UDP, udp(53, 40000)), 576)));
    data(circA, v4(a, D, ICMP, icmp(3, 3, v4(D, a, UDP, udp(53, 40001)))));
    exit.flush();
    assert.equal(device.written.length, 1, 'only the honest error reaches the TUN');
    assert.equal(device.written[0]![20], 3);
    assert.deepEqual(exit.counters.rejectsByReason, { 'icmp-foreign': 2 });
    assert.equal(exit.counters.drops.policy, 2);
    // The client hears why, once a second at most.
    const notices = sent.filter((m) => m.command === Relay.rejected).map((m) => m.text);
    assert.deepEqual(notices, [`icmp-foreign ${D}`]);
  });
});
