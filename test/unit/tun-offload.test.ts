/**
 * The TCP coalescer for vnet TUN writes (src/tun/offload.ts): runs of one
 * flow become one GSO entry that the kernel's segmentation turns back into
 * the very packets that went in; everything else passes unchanged.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  MAX_RUN_BYTES,
  MAX_RUN_SEGMENTS,
  TcpCoalescer,
  coalescible,
} from '../../src/tun/offload.js';
import {
  ACK,
  FIN,
  PSH,
  SYN,
  pack,
  resegment,
  tcpPacket,
  vnetEntries,
  type TcpSpec,
} from '../helpers/tcp-packets.js';

function payload(n: number, fill: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i += 1) b[i] = (fill + i * 7) & 0xff;
  return b;
}

/** `count` in-sequence segments of `mss` bytes (the last `lastLen`), ids counting up. */
function flow(count: number, mss: number, lastLen: number, base: Partial<TcpSpec> = {}): Buffer[] {
  const out: Buffer[] = [];
  let seq = base.seq ?? 1000;
  for (let i = 0; i < count; i += 1) {
    const n = i === count - 1 ? lastLen : mss;
    out.push(
      tcpPacket({
        ...base,
        seq,
        id: (base.id ?? 100) + i,
        flags: i === count - 1 ? ACK | PSH : ACK,
        payload: payload(n, i),
      }),
    );
    seq += n;
  }
  return out;
}

function run(packets: Buffer[]) {
  const c = new TcpCoalescer();
  const { buf, len } = pack(packets);
  const out = c.coalesce(buf, len);
  const entries = vnetEntries(out.buf, out.len);
  return { c, entries, expanded: entries.flatMap(resegment) };
}

test('a run of one flow becomes one GSO entry that segments back into the same packets', () => {
  const pkts = flow(10, 1000, 500);
  const { c, entries, expanded } = run(pkts);
  assert.equal(entries.length, 1);
  const e = entries[0]!;
  assert.equal(e.gsoType, 1, 'GSO_TCPV4');
  assert.equal(e.flags, 1, 'NEEDS_CSUM');
  assert.equal(e.gsoSize, 1000);
  assert.equal(e.hdrLen, 40);
  assert.equal(e.packet.length, 40 + 9500);
  assert.deepEqual(expanded, pkts, 'segmenting gives back every packet, byte for byte');
  assert.equal(c.runs, 1);
  assert.equal(c.segments, 10);
});

test('IPv6 runs, TCP options (timestamps) kept', () => {
  const ts = Buffer.from('0101080a0000000100000002', 'hex');
  const pkts = flow(5, 1200, 1200, { v6: true, options: ts });
  const { entries, expanded } = run(pkts);
  assert.equal(entries.length, 1);
  assert.equal(entries[0]!.gsoType, 4, 'GSO_TCPV6');
  assert.equal(entries[0]!.hdrLen, 40 + 32);
  assert.deepEqual(expanded, pkts);
});

test('other packets pass unchanged with an empty header; a run keeps its place', () => {
  const udp = Buffer.from('4500001c000000004011000000000000000000000000000000000000', 'hex');
  const a = flow(4, 800, 800, { sport: 1 });
  const b = flow(3, 600, 100, { sport: 2, seq: 5 });
  // a0 b0 udp a1 b1 a2 b2 a3
  const input = [a[0]!, b[0]!, udp, a[1]!, b[1]!, a[2]!, b[2]!, a[3]!];
  const { entries, expanded } = run(input);
  assert.equal(entries.length, 3, 'run a, run b, the UDP packet');
  assert.equal(entries[2]!.gsoType, 0);
  assert.equal(entries[2]!.flags, 0);
  assert.deepEqual(entries[2]!.packet, udp);
  assert.deepEqual(expanded, [...a, ...b, udp]);
});

test('what ends or prevents a run', () => {
  const base = flow(6, 1000, 1000);
  // A gap in sequence: two runs.
  const gap = [...base.slice(0, 3), ...flow(3, 1000, 1000, { seq: 1000 + 3000 + 1, id: 103 })];
  let r = run(gap);
  assert.equal(r.entries.length, 2);
  assert.deepEqual(r.expanded, gap);
  // PSH in the middle ends the run at that segment.
  const psh = flow(3, 1000, 1000).concat(flow(3, 1000, 1000, { seq: 4000, id: 103 }));
  r = run(psh);
  assert.equal(r.entries.length, 2);
  assert.deepEqual(r.expanded, psh);
  // A shorter segment ends it; a longer one starts another.
  const shortThenMore = [
    ...flow(2, 1000, 500, { id: 100 }).map((p, i) =>
      i === 1 ? tcpPacket({ seq: 2000, id: 101, payload: payload(500, 1) }) : p,
    ),
    tcpPacket({ seq: 2500, id: 102, payload: payload(1000, 2) }),
  ];
  r = run(shortThenMore);
  assert.equal(r.entries.length, 2);
  assert.deepEqual(r.expanded, shortThenMore);
  // Different ack, window, options, TOS, TTL or DF: no run.
  for (const diff of [
    { ack: 2 },
    { window: 9 },
    { options: Buffer.from('01010101', 'hex') },
    { tos: 2 },
    { ttl: 9 },
    { df: false },
  ] as Partial<TcpSpec>[]) {
    const two = [
      tcpPacket({ seq: 1, payload: payload(100, 0) }),
      tcpPacket({ seq: 101, payload: payload(100, 1), ...diff }),
    ];
    r = run(two);
    assert.equal(r.entries.length, 2, JSON.stringify(diff));
    assert.deepEqual(r.expanded, two);
  }
});

test('another packet of the flow (FIN, RST, pure ACK) ends its run: nothing overtakes it', () => {
  const a = flow(4, 500, 500);
  const fin = tcpPacket({ seq: 1000 + 1000, flags: FIN | ACK, payload: Buffer.alloc(0) });
  const input = [a[0]!, a[1]!, fin, a[2]!, a[3]!];
  const { entries, expanded } = run(input);
  assert.equal(entries.length, 3, 'run, FIN, run');
  assert.deepEqual(expanded, input, 'the order is unchanged');
  // Another flow's packet does not end it.
  const other = tcpPacket({ sport: 7, seq: 1, flags: FIN | ACK, payload: Buffer.alloc(0) });
  const r = run([a[0]!, a[1]!, other, a[2]!, a[3]!]);
  assert.equal(r.entries.length, 2);
  assert.deepEqual(r.expanded, [...a, other]);
});

test('SYN, FIN, no payload, options, fragments, bad headers: never coalesced', () => {
  const ok = tcpPacket({ seq: 1, payload: payload(100, 0) });
  const cases: [string, Buffer][] = [
    ['SYN', tcpPacket({ seq: 1, flags: SYN | ACK, payload: payload(100, 0) })],
    ['FIN', tcpPacket({ seq: 1, flags: FIN | ACK, payload: payload(100, 0) })],
    ['no ACK', tcpPacket({ seq: 1, flags: PSH, payload: payload(100, 0) })],
    ['no payload', tcpPacket({ seq: 1, payload: Buffer.alloc(0) })],
  ];
  const withOptions = Buffer.concat([
    Buffer.from([0x46]),
    ok.subarray(1, 20),
    Buffer.alloc(4),
    ok.subarray(20),
  ]);
  cases.push(['IPv4 options', withOptions]);
  const frag = Buffer.from(ok);
  frag.writeUInt16BE(0x2000, 6);
  cases.push(['more fragments', frag]);
  const badSum = Buffer.from(ok);
  badSum[10] = (badSum[10] as number) ^ 1;
  cases.push(['IPv4 header checksum', badSum]);
  const badLen = Buffer.from(ok);
  badLen.writeUInt16BE(ok.length - 1, 2);
  cases.push(['IPv4 total length', badLen]);
  for (const [what, p] of cases) {
    assert.equal(coalescible(p, 0, p.length), null, what);
    const next = tcpPacket({ seq: 101, payload: payload(100, 1) });
    const r = run([p, p, next]);
    assert.equal(r.entries.length, 3, what);
    assert.deepEqual(r.entries[0]!.packet, p, `${what}: unchanged`);
    assert.equal(r.entries[0]!.gsoType, 0);
  }
});

test('runs stop at 64 segments and at the byte limit', () => {
  const many = flow(150, 100, 100);
  let r = run(many);
  assert.deepEqual(
    r.entries.map((e) => e.packet.length),
    [40 + 64 * 100, 40 + 64 * 100, 40 + 22 * 100],
  );
  assert.ok(MAX_RUN_SEGMENTS === 64);
  assert.deepEqual(r.expanded, many);
  const big = flow(60, 1400, 1400);
  r = run(big);
  for (const e of r.entries) assert.ok(e.packet.length <= MAX_RUN_BYTES);
  assert.deepEqual(r.expanded, big);
});

test('a malformed batch is cut where it breaks; nothing throws', () => {
  const pkts = flow(3, 500, 500);
  const { buf, len } = pack(pkts);
  const c = new TcpCoalescer();
  const cut = c.coalesce(buf, len - 10);
  const entries = vnetEntries(cut.buf, cut.len);
  assert.deepEqual(entries.flatMap(resegment), pkts.slice(0, 2));
  const lie = Buffer.from(buf);
  lie.writeUInt16BE(0xffff, 0);
  assert.equal(c.coalesce(lie, len).len, 0);
  assert.equal(c.coalesce(Buffer.alloc(1), 1).len, 0);
});

test('random batches of mutated segments: same packets out (checksums aside), order kept per flow', () => {
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  const c = new TcpCoalescer();
  for (let round = 0; round < 2000; round += 1) {
    const pkts: Buffer[] = [];
    for (let f = 0; f < 1 + rnd(3); f += 1) {
      pkts.push(...flow(1 + rnd(12), 1 + rnd(1400), 1 + rnd(1400), { sport: f, v6: rnd(2) === 1 }));
    }
    // Shuffle a little and flip a few bytes.
    for (let k = 0; k < rnd(3); k += 1) {
      const i = rnd(pkts.length);
      const j = rnd(pkts.length);
      [pkts[i], pkts[j]] = [pkts[j]!, pkts[i]!];
    }
    for (let k = 0; k < rnd(3); k += 1) {
      const p = pkts[rnd(pkts.length)]!;
      const at = rnd(p.length);
      p[at] = (p[at] as number) ^ (1 << rnd(8));
    }
    const { buf, len } = pack(pkts);
    const out = c.coalesce(buf, len);
    const expanded = vnetEntries(out.buf, out.len).flatMap(resegment);
    const key = (p: Buffer) => masked(p).toString('hex');
    assert.deepEqual(expanded.map(key).sort(), pkts.map(key).sort(), `round ${round}`);
  }
});

/** The packet with the fields segmentation rewrites zeroed (ids, checksums) where it may have. */
function masked(p: Buffer): Buffer {
  const m = Buffer.from(p);
  if (coalescible(p, 0, p.length) === null) return m;
  const v6 = (p[0] as number) >> 4 === 6;
  const ipHdr = v6 ? 40 : 20;
  if (!v6) {
    m.writeUInt16BE(0, 4);
    m.writeUInt16BE(0, 10);
  }
  m.writeUInt16BE(0, ipHdr + 16);
  return m;
}
