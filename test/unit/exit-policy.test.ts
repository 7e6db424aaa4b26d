import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import {
  ExitPolicy,
  parseAllowList,
  parsePolicyFile,
  parsePolicyText,
  type PolicyRule,
  type Verdict,
} from '../../exit/policy.js';
import { ShallotError } from '../../src/errors.js';
import { type Cidr, cidrContains, formatIp, parseCidr, parseIp } from '../../src/net/cidr.js';

// ------------------------------------------------------------ packet builders

const TCP = 6;
const UDP = 17;
const ICMP = 1;
const ICMP6 = 58;

interface V4Spec {
  dst: string;
  proto?: number;
  dport?: number;
  /** Fragment offset in 8-byte units (0: first or only fragment). */
  fragOffset?: number;
  moreFragments?: boolean;
  optionWords?: number;
  payload?: number;
}

function ipBytes(text: string): Buffer {
  const b = parseIp(text);
  assert.ok(b, text);
  return b;
}

function l4(proto: number, dport: number, payload: number): Buffer {
  const size = proto === TCP ? 20 : 8;
  const b = Buffer.alloc(size + payload);
  if (proto === TCP || proto === UDP) {
    b.writeUInt16BE(40000, 0);
    b.writeUInt16BE(dport, 2);
  } else {
    b[0] = proto === ICMP6 ? 128 : 8; // echo request
  }
  return b;
}

function laterFragment(fakePort: number): Buffer {
  const b = Buffer.alloc(24, 0xab);
  b.writeUInt16BE(fakePort, 2);
  return b;
}

function v4Packet(s: V4Spec): Buffer {
  const proto = s.proto ?? UDP;
  const ihl = 5 + (s.optionWords ?? 0);
  // A later fragment carries no transport header; its data holds the port
  // where a header would, so reading a "port" from it would show.
  const body =
    (s.fragOffset ?? 0) > 0
      ? laterFragment(s.dport ?? 80)
      : l4(proto, s.dport ?? 80, s.payload ?? 4);
  const h = Buffer.alloc(ihl * 4);
  h[0] = 0x40 | ihl;
  h.writeUInt16BE(ihl * 4 + body.length, 2);
  h.writeUInt16BE(((s.moreFragments ? 1 : 0) << 13) | (s.fragOffset ?? 0), 6);
  h[8] = 64;
  h[9] = proto;
  ipBytes('198.51.100.7').copy(h, 12);
  ipBytes(s.dst).copy(h, 16);
  for (let i = 20; i < ihl * 4; i += 1) h[i] = 1; // NOP options
  return Buffer.concat([h, body]);
}

type Ext = 'hop' | 'dst' | 'routing' | 'ah' | 'frag-first' | 'frag-later';

interface V6Spec {
  dst: string;
  next?: number;
  dport?: number;
  ext?: Ext[];
  payload?: number;
}

const EXT_CODE: Record<Ext, number> = {
  hop: 0,
  dst: 60,
  routing: 43,
  ah: 51,
  'frag-first': 44,
  'frag-later': 44,
};

function v6Packet(s: V6Spec): Buffer {
  const proto = s.next ?? UDP;
  const ext = s.ext ?? [];
  const later = ext.includes('frag-later');
  let body = later ? laterFragment(s.dport ?? 80) : l4(proto, s.dport ?? 80, s.payload ?? 4);
  // Build extension headers back to front.
  let next = proto;
  for (let i = ext.length - 1; i >= 0; i -= 1) {
    const kind = ext[i] as Ext;
    let h: Buffer;
    if (kind === 'frag-first' || kind === 'frag-later') {
      h = Buffer.alloc(8);
      h.writeUInt16BE(kind === 'frag-later' ? (185 << 3) | 1 : 1, 2);
    } else if (kind === 'ah') {
      h = Buffer.alloc(16); // (len + 2) * 4 = 16 -> len 2
      h[1] = 2;
    } else {
      h = Buffer.alloc(16); // (len + 1) * 8 = 16 -> len 1
      h[1] = 1;
    }
    h[0] = next;
    next = EXT_CODE[kind];
    body = Buffer.concat([h, body]);
  }
  const h = Buffer.alloc(40);
  h[0] = 0x60;
  h.writeUInt16BE(body.length, 4);
  h[6] = next;
  h[7] = 64;
  ipBytes('2001:db8::7').copy(h, 8);
  ipBytes(s.dst).copy(h, 24);
  return Buffer.concat([h, body]);
}

function decide(policy: ExitPolicy, packet: Buffer): Verdict {
  // Decide at an offset inside a larger buffer, as the exit does.
  const big = Buffer.alloc(packet.length + 13, 0xee);
  packet.copy(big, 7);
  return policy.decide(big, 7, packet.length);
}

function reason(v: Verdict): string {
  return v.verdict === 'accept' ? 'accept' : v.reason;
}

const plain = new ExitPolicy({ ownNetworks: [] });

// ------------------------------------------------------------ defaults

describe('default rejects', () => {
  const cases: [string, string][] = [
    ['10.1.2.3', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.168.77.1', 'private'],
    ['100.64.0.1', 'private'],
    ['100.127.255.254', 'private'],
    ['0.1.2.3', 'private'],
    ['255.255.255.255', 'private'],
    ['127.0.0.1', 'loopback'],
    ['127.200.0.9', 'loopback'],
    ['169.254.1.1', 'link-local'],
    ['224.0.0.251', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['fd12::1', 'private'],
    ['fc00::5', 'private'],
    ['::', 'private'],
    ['::1', 'loopback'],
    ['fe80::1', 'link-local'],
    ['febf::1', 'link-local'],
    ['ff02::fb', 'multicast'],
    ['::ffff:8.8.8.8', 'private'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['64:ff9b::127.0.0.1', 'loopback'],
    ['64:ff9b::10.0.0.1', 'private'],
    ['64:ff9b::169.254.169.254', 'link-local'],
    ['8.8.8.8', 'accept'],
    ['172.32.0.1', 'accept'],
    ['100.128.0.1', 'accept'],
    ['2001:4860:4860::8888', 'accept'],
    ['64:ff9b::8.8.8.8', 'accept'],
    ['fec0::1', 'accept'],
  ];
  for (const [dst, want] of cases) {
    it(`${dst} -> ${want}`, () => {
      const p = dst.includes(':') ? v6Packet({ dst, next: ICMP6 }) : v4Packet({ dst, proto: ICMP });
      const v = decide(plain, p);
      assert.equal(reason(v), want);
      if (v.verdict === 'reject') assert.equal(v.destination, formatIp(ipBytes(dst)));
    });
  }

  it('port 25 over TCP and UDP, both families, but not other ports or protocols', () => {
    assert.equal(
      reason(decide(plain, v4Packet({ dst: '8.8.8.8', proto: TCP, dport: 25 }))),
      'port-25',
    );
    assert.equal(
      reason(decide(plain, v4Packet({ dst: '8.8.8.8', proto: UDP, dport: 25 }))),
      'port-25',
    );
    assert.equal(
      reason(decide(plain, v6Packet({ dst: '2001:db8:1::1', next: TCP, dport: 25 }))),
      'port-25',
    );
    assert.equal(
      reason(decide(plain, v4Packet({ dst: '8.8.8.8', proto: TCP, dport: 26 }))),
      'accept',
    );
    assert.equal(
      reason(decide(plain, v4Packet({ dst: '8.8.8.8', proto: TCP, dport: 587 }))),
      'accept',
    );
    // Protocol 132 (SCTP) has ports at the same place, but ports only apply to TCP/UDP.
    const sctp = v4Packet({ dst: '8.8.8.8', proto: TCP, dport: 25 });
    sctp[9] = 132;
    assert.equal(reason(decide(plain, sctp)), 'accept');
  });

  it('IPv6 extension headers do not hide port 25', () => {
    for (const ext of [
      ['hop'],
      ['dst'],
      ['routing'],
      ['ah'],
      ['frag-first'],
      ['hop', 'dst', 'ah'],
    ]) {
      const p = v6Packet({ dst: '2001:db8:1::1', next: TCP, dport: 25, ext: ext as Ext[] });
      assert.equal(reason(decide(plain, p)), 'port-25', ext.join(','));
    }
    // A later fragment has no transport header: no port to judge.
    const later = v6Packet({ dst: '2001:db8:1::1', next: TCP, dport: 25, ext: ['frag-later'] });
    assert.equal(reason(decide(plain, later)), 'accept');
  });

  it('IPv4 options and fragments', () => {
    const opts = v4Packet({ dst: '8.8.8.8', proto: TCP, dport: 25, optionWords: 3 });
    assert.equal(reason(decide(plain, opts)), 'port-25');
    const first = v4Packet({ dst: '8.8.8.8', proto: UDP, dport: 25, moreFragments: true });
    assert.equal(reason(decide(plain, first)), 'port-25');
    const later = v4Packet({ dst: '8.8.8.8', proto: UDP, fragOffset: 100 });
    assert.equal(reason(decide(plain, later)), 'accept');
  });

  it("the exit's own networks", () => {
    const own = new ExitPolicy({
      ownNetworks: [
        parseCidr('203.0.113.9/32'),
        parseCidr('10.70.0.1/24'),
        parseCidr('2001:db8:5::1/64'),
      ],
    });
    assert.equal(reason(decide(own, v4Packet({ dst: '203.0.113.9' }))), 'own-address');
    assert.equal(reason(decide(own, v4Packet({ dst: '203.0.113.10' }))), 'accept');
    assert.equal(reason(decide(own, v4Packet({ dst: '10.70.0.200' }))), 'own-address');
    assert.equal(reason(decide(own, v6Packet({ dst: '2001:db8:5::abc' }))), 'own-address');
    assert.equal(reason(decide(own, v6Packet({ dst: '64:ff9b::203.0.113.9' }))), 'own-address');
    assert.equal(reason(decide(own, v6Packet({ dst: '2001:db8:6::1' }))), 'accept');
  });
});

// ------------------------------------------------------------ allow and rules

describe('allow list and policy file', () => {
  it('--allow overrides private, link-local, multicast and port 25', () => {
    const p = new ExitPolicy({
      allow: parseAllowList(['10.60.0.0/16,[fd00::/8]', '169.254.0.0/16', '224.0.0.0/4', '*:25']),
    });
    assert.equal(reason(decide(p, v4Packet({ dst: '10.60.3.4' }))), 'accept');
    assert.equal(reason(decide(p, v4Packet({ dst: '10.61.3.4' }))), 'private');
    assert.equal(reason(decide(p, v6Packet({ dst: 'fd00::9' }))), 'accept');
    assert.equal(reason(decide(p, v6Packet({ dst: 'fc00::9' }))), 'private');
    assert.equal(reason(decide(p, v4Packet({ dst: '169.254.169.254' }))), 'accept');
    assert.equal(reason(decide(p, v4Packet({ dst: '239.1.1.1' }))), 'accept');
    assert.equal(reason(decide(p, v4Packet({ dst: '8.8.8.8', proto: TCP, dport: 25 }))), 'accept');
    // ...but a port entry does not open a private range on that port for other protocols.
    assert.equal(reason(decide(p, v4Packet({ dst: '192.168.1.1', proto: ICMP }))), 'private');
  });

  it('neither --allow nor the policy file reach loopback or own addresses', () => {
    const own = [parseCidr('198.51.100.1/32'), parseCidr('2001:db8:9::1/128')];
    const p = new ExitPolicy({
      allow: parseAllowList(['*', '127.0.0.0/8', '[::1/128]', '198.51.100.0/24']),
      rules: parsePolicyText('accept *\naccept 127.0.0.1/32\n', 'p'),
      ownNetworks: own,
    });
    assert.equal(reason(decide(p, v4Packet({ dst: '127.0.0.1' }))), 'loopback');
    assert.equal(reason(decide(p, v6Packet({ dst: '::1' }))), 'loopback');
    assert.equal(reason(decide(p, v6Packet({ dst: '::ffff:127.0.0.1' }))), 'loopback');
    assert.equal(reason(decide(p, v4Packet({ dst: '198.51.100.1' }))), 'own-address');
    assert.equal(reason(decide(p, v6Packet({ dst: '2001:db8:9::1' }))), 'own-address');
    assert.equal(reason(decide(p, v4Packet({ dst: '198.51.100.2' }))), 'accept');
    assert.equal(reason(decide(p, v4Packet({ dst: '10.0.0.1' }))), 'accept');
  });

  it('policy file: first match wins, accept leaves the defaults in force', () => {
    const rules = parsePolicyText(
      [
        '# web-only exit',
        'reject 8.8.4.0/24',
        'accept *:80-443  # web',
        'accept [2001:db8::/32]',
        'reject *',
      ].join('\n'),
      'web.policy',
    );
    const p = new ExitPolicy({ rules });
    assert.equal(reason(decide(p, v4Packet({ dst: '8.8.8.8', proto: TCP, dport: 443 }))), 'accept');
    assert.equal(reason(decide(p, v4Packet({ dst: '8.8.8.8', proto: TCP, dport: 80 }))), 'accept');
    assert.equal(reason(decide(p, v4Packet({ dst: '8.8.8.8', proto: UDP, dport: 444 }))), 'policy');
    assert.equal(reason(decide(p, v4Packet({ dst: '8.8.8.8', proto: ICMP }))), 'policy');
    assert.equal(reason(decide(p, v4Packet({ dst: '8.8.4.4', proto: TCP, dport: 443 }))), 'policy');
    // accept in the file does not open private ranges: that takes --allow.
    assert.equal(
      reason(decide(p, v4Packet({ dst: '10.0.0.1', proto: TCP, dport: 80 }))),
      'private',
    );
    assert.equal(reason(decide(p, v6Packet({ dst: '2001:db8::1', next: ICMP6 }))), 'accept');
    assert.equal(
      reason(decide(p, v6Packet({ dst: '2001:db8::1', next: TCP, dport: 25 }))),
      'port-25',
    );
    assert.equal(reason(decide(p, v6Packet({ dst: '2001:db9::1', next: ICMP6 }))), 'policy');
    // --allow comes before the file.
    const q = new ExitPolicy({ rules, allow: parseAllowList(['8.8.4.4/32']) });
    assert.equal(reason(decide(q, v4Packet({ dst: '8.8.4.4', proto: ICMP }))), 'accept');
  });

  it('port ranges match TCP and UDP only; rules without ports match every protocol', () => {
    const p = new ExitPolicy({ rules: parsePolicyText('reject *:0-65535\n', 'x') });
    assert.equal(reason(decide(p, v4Packet({ dst: '8.8.8.8', proto: TCP, dport: 0 }))), 'policy');
    assert.equal(
      reason(decide(p, v4Packet({ dst: '8.8.8.8', proto: UDP, dport: 65535 }))),
      'policy',
    );
    assert.equal(reason(decide(p, v4Packet({ dst: '8.8.8.8', proto: ICMP }))), 'accept');
    assert.equal(reason(decide(p, v4Packet({ dst: '8.8.8.8', proto: 47 }))), 'accept');
    assert.equal(reason(decide(p, v6Packet({ dst: '2001:db8::1', next: ICMP6 }))), 'accept');
    // A non-first fragment has no known port: port rules do not match it.
    assert.equal(reason(decide(p, v4Packet({ dst: '8.8.8.8', fragOffset: 3 }))), 'accept');
    const q = new ExitPolicy({ rules: parsePolicyText('reject 8.8.8.0/24\n', 'x') });
    assert.equal(reason(decide(q, v4Packet({ dst: '8.8.8.8', proto: ICMP }))), 'policy');
    assert.equal(reason(decide(q, v4Packet({ dst: '8.8.8.8', fragOffset: 3 }))), 'policy');
    const r = new ExitPolicy({ rules: parsePolicyText('reject [2001:db8::/32]:1000-2000\n', 'x') });
    for (const [port, want] of [
      [999, 'accept'],
      [1000, 'policy'],
      [1500, 'policy'],
      [2000, 'policy'],
      [2001, 'accept'],
    ] as const) {
      const pk = v6Packet({ dst: '2001:db8::1', next: UDP, dport: port, ext: ['dst'] });
      assert.equal(reason(decide(r, pk)), want, String(port));
    }
    assert.equal(reason(decide(r, v4Packet({ dst: '8.8.8.8', dport: 1500 }))), 'accept');
  });

  it('summary', () => {
    const p = new ExitPolicy({ allow: parseAllowList(['10.60.0.0/16']), ownNetworks: [] });
    assert.equal(
      p.summary(),
      'accept 10.60.0.0/16; reject private, loopback, link-local, multicast, port 25',
    );
    const q = new ExitPolicy({
      rules: parsePolicyText('accept *:80-443\naccept [fd00::/8]:53\nreject *\n', 'x'),
    });
    assert.equal(
      q.summary(),
      'accept *:80-443; accept [fd00::/8]:53; reject *; reject private, loopback, link-local, multicast, port 25',
    );
  });
});

// ------------------------------------------------------------ parsing

function isOneLineUserError(file?: string, line?: number) {
  return (e: unknown) => {
    assert.ok(e instanceof ShallotError, String(e));
    assert.equal(e.kind, 'user');
    assert.ok(!e.message.includes('\n'), e.message);
    if (file !== undefined) assert.ok(e.message.startsWith(`${file}:${line}: `), e.message);
    return true;
  };
}

describe('policy parsing', () => {
  it('good lines', () => {
    const rules = parsePolicyText(
      [
        '  # comment',
        '',
        'accept *',
        'reject *:25\r',
        'accept 10.0.0.1/8:80-443',
        '\treject [fd00::/8]:80-443 # trailing comment',
        'accept fd00::/8',
        'accept [fd00::1/128]',
        'reject 192.0.2.7',
        'reject 2001:db8::7',
        'accept *:0-65535',
      ].join('\n'),
      'ok.policy',
    );
    assert.deepEqual(
      rules.map((r) => r.text),
      [
        'accept *',
        'reject *:25',
        'accept 10.0.0.1/8:80-443',
        'reject [fd00::/8]:80-443',
        'accept fd00::/8',
        'accept fd00::1/128',
        'reject 192.0.2.7/32',
        'reject 2001:db8::7/128',
        'accept *:0-65535',
      ],
    );
    const r = rules[3] as PolicyRule;
    assert.equal(r.action, 'reject');
    assert.equal(r.cidr?.family, 6);
    assert.deepEqual(r.ports, { from: 80, to: 443 });
    assert.equal(rules[0]?.cidr, null);
    assert.equal(rules[0]?.ports, null);
  });

  it('bad lines name the file and line', () => {
    const bad = [
      'allow *',
      'accept',
      'accept * extra',
      'accept 10.0.0.0/33',
      'accept 10.0.0.0/8:',
      'accept 10.0.0.0/8:70000',
      'accept 10.0.0.0/8:443-80',
      'accept 10.0.0.0/8:a',
      'accept fd00::/8:80',
      'accept [fd00::/8',
      'accept [fd00::/8]80',
      'accept [10.0.0.0/8]:80',
      'accept host.example',
      'accept 10.0.0/8',
      'accept [*]:80',
      'ACCEPT *',
      'accept *:1-2-3',
      'accept \u0000\u0007',
    ];
    for (const line of bad) {
      assert.throws(
        () => parsePolicyText(`# ok\naccept *\n${line}\n`, 'bad.policy'),
        isOneLineUserError('bad.policy', 3),
        line,
      );
    }
  });

  it('files', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shallot-policy-'));
    try {
      const file = path.join(dir, 'exit.policy');
      fs.writeFileSync(file, 'reject 1.2.3.0/24\naccept *\n');
      assert.equal(parsePolicyFile(file).length, 2);
      fs.writeFileSync(file, 'reject 1.2.3.0/24\nreject nonsense\n');
      assert.throws(() => parsePolicyFile(file), isOneLineUserError(file, 2));
      assert.throws(() => parsePolicyFile(path.join(dir, 'missing')), isOneLineUserError());
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('allow list', () => {
    const rules = parseAllowList(['10.60.0.0/16, [fd60::/16]:1-1024,', '*:25']);
    assert.deepEqual(
      rules.map((r) => r.text),
      ['accept 10.60.0.0/16', 'accept [fd60::/16]:1-1024', 'accept *:25'],
    );
    assert.ok(rules.every((r) => r.action === 'accept'));
    for (const bad of ['10.60.0.0/33', 'x', '10.0.0.0/8:99999', 'fd00::/8:80']) {
      assert.throws(
        () => parseAllowList([bad]),
        (e: unknown) => isOneLineUserError()(e) && (e as Error).message.startsWith('--allow'),
      );
    }
  });
});

// ------------------------------------------------------------ malformed input

describe('malformed packets', () => {
  const samples = [
    v4Packet({ dst: '8.8.8.8', proto: TCP, dport: 443 }),
    v4Packet({ dst: '8.8.8.8', proto: UDP, dport: 53, optionWords: 2 }),
    v4Packet({ dst: '8.8.8.8', proto: ICMP }),
    v6Packet({ dst: '2001:db8::1', next: TCP, dport: 443 }),
    v6Packet({ dst: '2001:db8::1', next: UDP, dport: 53, ext: ['hop', 'frag-first', 'ah'] }),
    v6Packet({ dst: '2001:db8::1', next: ICMP6 }),
  ];

  it('every truncation of a valid packet is rejected as malformed, without throwing', () => {
    for (const p of samples) {
      assert.equal(reason(plain.decide(p, 0, p.length)), 'accept');
      for (let len = 0; len < p.length; len += 1) {
        assert.equal(reason(plain.decide(p, 0, len)), 'malformed', `len ${len}`);
        assert.equal(reason(plain.decide(p.subarray(0, len), 0, len)), 'malformed');
      }
    }
  });

  it('inconsistent headers', () => {
    const p = v4Packet({ dst: '8.8.8.8', proto: TCP, dport: 443 });
    const bad = (f: (b: Buffer) => void) => {
      const b = Buffer.from(p);
      f(b);
      return reason(plain.decide(b, 0, b.length));
    };
    assert.equal(
      bad((b) => (b[0] = 0x44)),
      'malformed',
    ); // IHL 4
    assert.equal(
      bad((b) => (b[0] = 0x4f)),
      'malformed',
    ); // IHL beyond the packet
    assert.equal(
      bad((b) => b.writeUInt16BE(19, 2)),
      'malformed',
    ); // total < header
    assert.equal(
      bad((b) => b.writeUInt16BE(b.length + 1, 2)),
      'malformed',
    );
    assert.equal(
      bad((b) => b.writeUInt16BE(22, 2)),
      'malformed',
    ); // TCP without ports
    assert.equal(
      bad((b) => (b[0] = 0x55)),
      'malformed',
    ); // version 5
    const q = v6Packet({ dst: '2001:db8::1', next: TCP, dport: 443, ext: ['hop'] });
    const bad6 = (f: (b: Buffer) => void) => {
      const b = Buffer.from(q);
      f(b);
      return reason(plain.decide(b, 0, b.length));
    };
    assert.equal(
      bad6((b) => b.writeUInt16BE(q.length - 39, 4)),
      'malformed',
    );
    assert.equal(
      bad6((b) => (b[41] = 200)),
      'malformed',
    ); // extension runs past the end
    assert.equal(
      bad6((b) => b.writeUInt16BE(0, 4)),
      'malformed',
    ); // jumbogram: not handled
  });

  it('odd arguments and random bytes never throw', () => {
    const p = samples[0] as Buffer;
    for (const [o, l] of [
      [-1, 10],
      [0, p.length + 1],
      [p.length, 1],
      [NaN, 20],
      [0, NaN],
      [1.5, 20],
      [0, -5],
      [Infinity, 1],
    ]) {
      assert.equal(reason(plain.decide(p, o as number, l as number)), 'malformed', `${o},${l}`);
    }
    const rnd = mulberry32(7);
    for (let i = 0; i < 20_000; i += 1) {
      const base = samples[i % samples.length] as Buffer;
      const b = Buffer.from(base);
      for (let k = 0; k < 1 + Math.floor(rnd() * 4); k += 1) {
        b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
      }
      const len = rnd() < 0.2 ? Math.floor(rnd() * b.length) : b.length;
      const v = plain.decide(b, 0, len);
      assert.ok(v.verdict === 'accept' || typeof v.reason === 'string');
    }
    for (let i = 0; i < 5_000; i += 1) {
      const b = Buffer.alloc(Math.floor(rnd() * 80));
      for (let k = 0; k < b.length; k += 1) b[k] = Math.floor(rnd() * 256);
      if (b.length > 0 && rnd() < 0.5) b[0] = rnd() < 0.5 ? 0x45 : 0x60;
      plain.decide(b, 0, b.length);
    }
  });
});

// ------------------------------------------------------------ randomized model check

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface ModelPacket {
  family: 4 | 6;
  dst: Buffer;
  /** Destination port when TCP/UDP and known, else null. */
  port: number | null;
}

const C = (t: string) => parseCidr(t);
const in_ = (cidr: string, ip: Buffer) => cidrContains(C(cidr), ip);

/** The policy as the module comment states it, written plainly. */
function model(pkt: ModelPacket, allow: PolicyRule[], rules: PolicyRule[], own: Cidr[]): string {
  const dst = pkt.dst;
  // The IPv4 addresses an IPv6 destination stands for (protocol 9.6).
  const v4s: Buffer[] = pkt.family === 4 ? [dst] : [];
  if (pkt.family === 6) {
    if (in_('::ffff:0:0/96', dst) || in_('::/96', dst) || in_('64:ff9b::/96', dst)) {
      v4s.push(dst.subarray(12));
    } else if (in_('2002::/16', dst)) {
      v4s.push(dst.subarray(2, 6));
    } else if (in_('2001::/32', dst)) {
      v4s.push(Buffer.from(dst.subarray(12).map((x) => ~x & 0xff)), dst.subarray(4, 8));
    }
  }
  const anyV4 = (cidr: string) => v4s.some((a) => in_(cidr, a));
  // 0. ICMP quotes (none in these packets), NAT64 local use
  if (pkt.family === 6 && in_('64:ff9b:1::/48', dst)) return 'nat64-local';
  // 1. hard rejects
  if (pkt.family === 6 && in_('::1/128', dst)) return 'loopback';
  if (pkt.family === 6 && own.some((c) => cidrContains(c, dst))) return 'own-address';
  if (anyV4('127.0.0.0/8')) return 'loopback';
  if (v4s.some((a) => own.some((c) => cidrContains(c, a)))) return 'own-address';
  const addressMatches = (r: PolicyRule) => {
    if (r.cidr === null) return true;
    if (r.cidr.family === pkt.family) return cidrContains(r.cidr, dst);
    if (r.cidr.family === 6 || v4s.length === 0) return false;
    const hits = v4s.map((a) => cidrContains(r.cidr as Cidr, a));
    return r.action === 'accept' ? hits.every(Boolean) : hits.some(Boolean);
  };
  const matches = (r: PolicyRule) =>
    addressMatches(r) &&
    (r.ports === null || (pkt.port !== null && pkt.port >= r.ports.from && pkt.port <= r.ports.to));
  // 2. allow
  if (allow.some(matches)) return 'accept';
  // 3. policy file
  const first = rules.find(matches);
  if (first?.action === 'reject') return 'policy';
  // 4. defaults
  if (pkt.family === 6) {
    if (in_('fc00::/7', dst) || in_('::/96', dst) || in_('::ffff:0:0/96', dst)) return 'private';
    if (in_('fe80::/10', dst)) return 'link-local';
    if (in_('ff00::/8', dst)) return 'multicast';
  }
  for (const v4 of v4s) {
    for (const p of [
      '10.0.0.0/8',
      '172.16.0.0/12',
      '192.168.0.0/16',
      '100.64.0.0/10',
      '0.0.0.0/8',
    ]) {
      if (in_(p, v4)) return 'private';
    }
    if (in_('255.255.255.255/32', v4)) return 'private';
    if (in_('169.254.0.0/16', v4)) return 'link-local';
    if (in_('224.0.0.0/4', v4)) return 'multicast';
  }
  if (pkt.port === 25) return 'port-25';
  return 'accept';
}

describe('randomized against a plain model', () => {
  const rnd = mulberry32(20240607);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
  const int = (n: number) => Math.floor(rnd() * n);

  const SEEDS4 = [
    '10.0.0.0/8',
    '10.60.0.0/16',
    '172.16.0.0/12',
    '192.168.0.0/16',
    '100.64.0.0/10',
    '127.0.0.0/8',
    '169.254.0.0/16',
    '224.0.0.0/4',
    '0.0.0.0/8',
    '255.255.255.252/30',
    '8.8.8.0/24',
    '203.0.113.0/24',
    '0.0.0.0/0',
  ];
  const SEEDS6 = [
    'fc00::/7',
    'fd00::/16',
    'fe80::/10',
    'ff00::/8',
    '::/127',
    '::ffff:0:0/96',
    '::ffff:10.0.0.0/104',
    '::ffff:127.0.0.0/104',
    '64:ff9b::/96',
    '64:ff9b::a00:0/104',
    '64:ff9b::7f00:0/104',
    '64:ff9b:1::/48',
    '2002::/16',
    '2002:a00::/24',
    '2002:7f00::/24',
    '2001::/32',
    '2001:0:808:808::/64',
    '2001:0:a00::/40',
    '::a00:0/104',
    '2001:db8::/32',
    '2001:db8:5::/48',
    '::/0',
  ];

  /** A random address inside a seed network. */
  function addressIn(seed: string): Buffer {
    const c = C(seed);
    const out = Buffer.from(c.address);
    for (let i = 0; i < out.length; i += 1) {
      const keep = Math.max(0, Math.min(8, c.prefix - i * 8));
      const mask = keep === 0 ? 0 : (0xff << (8 - keep)) & 0xff;
      out[i] = ((out[i] as number) & mask) | (int(256) & ~mask & 0xff);
    }
    return out;
  }

  function randomCidr(minPrefix4 = 0, minPrefix6 = 0): { v6: boolean; text: string } {
    const v6 = rnd() < 0.45;
    const seed = pick(v6 ? SEEDS6 : SEEDS4);
    const prefix = Math.min(
      v6 ? 128 : 32,
      Math.max(v6 ? minPrefix6 : minPrefix4, C(seed).prefix + int(v6 ? 40 : 12)),
    );
    return { v6, text: `${formatIp(addressIn(seed))}/${prefix}` };
  }

  function randomTarget(): string {
    if (rnd() < 0.1) return '*' + (rnd() < 0.5 ? '' : `:${randomPorts()}`);
    const { v6, text } = randomCidr();
    if (rnd() < 0.6) return text;
    return v6 ? `[${text}]:${randomPorts()}` : `${text}:${randomPorts()}`;
  }

  function randomPorts(): string {
    const a = pick([25, 53, 80, 443, int(65536), 0]);
    if (rnd() < 0.5) return String(a);
    const b = Math.min(65535, a + pick([0, 1, 100, int(65536)]));
    return `${a}-${b}`;
  }

  function randomPacket(): { model: ModelPacket; bytes: Buffer } {
    const v6 = rnd() < 0.5;
    const dst = addressIn(pick(v6 ? SEEDS6 : SEEDS4));
    const proto = pick(v6 ? [TCP, UDP, ICMP6, 47] : [TCP, UDP, ICMP, 47]);
    const dport = pick([25, 53, 80, 443, 0, 65535, int(65536)]);
    if (v6) {
      const ext: Ext[] = [];
      for (let i = int(3); i > 0; i -= 1) {
        ext.push(pick(['hop', 'dst', 'routing', 'ah', 'frag-first'] as const));
      }
      const later = rnd() < 0.1;
      if (later) ext.push('frag-later');
      const port = (proto === TCP || proto === UDP) && !later ? dport : null;
      return {
        model: { family: 6, dst, port },
        bytes: v6Packet({ dst: formatIp(dst), next: proto, dport, ext }),
      };
    }
    const fragOffset = rnd() < 0.1 ? 1 + int(1000) : 0;
    const port = (proto === TCP || proto === UDP) && fragOffset === 0 ? dport : null;
    return {
      model: { family: 4, dst, port },
      bytes: v4Packet({
        dst: formatIp(dst),
        proto,
        dport,
        fragOffset,
        moreFragments: rnd() < 0.2,
        optionWords: rnd() < 0.2 ? 1 + int(4) : 0,
      }),
    };
  }

  it('10,000 random packets against random policies agree with the model', () => {
    const seen = new Map<string, number>();
    for (let round = 0; round < 100; round += 1) {
      const allowTexts = Array.from({ length: int(4) }, randomTarget);
      const fileText = Array.from(
        { length: int(8) },
        () => `${rnd() < 0.5 ? 'accept' : 'reject'} ${randomTarget()}`,
      ).join('\n');
      const allow = parseAllowList(allowTexts);
      const rules = parsePolicyText(fileText, 'random.policy');
      const own = Array.from({ length: int(3) }, () => C(randomCidr(16, 32).text));
      const policy = new ExitPolicy({ allow, rules, ownNetworks: own });
      for (let i = 0; i < 100; i += 1) {
        const { model: m, bytes } = randomPacket();
        const want = model(m, allow, rules, own);
        const got = decide(policy, bytes);
        seen.set(want, (seen.get(want) ?? 0) + 1);
        assert.equal(
          reason(got),
          want,
          `${formatIp(m.dst)} port ${m.port}; allow ${allowTexts.join(',')}; own ${own
            .map((c) => c.text)
            .join(',')}; rules ${fileText.replace(/\n/g, ' | ')}`,
        );
        if (got.verdict === 'reject') assert.equal(got.destination, formatIp(m.dst));
      }
    }
    // The generator reaches every outcome.
    for (const r of [
      'accept',
      'private',
      'loopback',
      'link-local',
      'multicast',
      'own-address',
      'port-25',
      'policy',
    ]) {
      assert.ok((seen.get(r) ?? 0) > 20, `${r}: ${seen.get(r) ?? 0}`);
    }
  });
});
