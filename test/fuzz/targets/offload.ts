/**
 * The TCP coalescer of vnet TUN writes (src/tun/offload.ts) on packed
 * batches from the network: it never throws, its output always parses,
 * and what the kernel would segment it into is the packets that went in
 * (ids and checksums aside, which segmentation rewrites).
 */
import { coalescible, TcpCoalescer } from '../../../src/tun/offload.js';
import { pack, resegment, tcpPacket, vnetEntries } from '../../helpers/tcp-packets.js';
import type { Rng } from '../rng.js';
import { check, type Field, type FuzzTarget } from '../target.js';

const coalescer = new TcpCoalescer();
let runs = 0;
let batches = 0;

/** A batch of 1-3 flows of in-sequence segments, interleaved, as packed bytes. */
function randomBatch(rng: Rng): Buffer {
  const pkts: Buffer[] = [];
  const flows = 1 + rng.below(3);
  for (let f = 0; f < flows; f += 1) {
    const v6 = rng.chance(0.3);
    const mss = 1 + rng.below(300);
    let seq = rng.below(0x7fffffff) * 2;
    const n = 1 + rng.below(8);
    for (let i = 0; i < n; i += 1) {
      const len = i === n - 1 ? 1 + rng.below(mss) : mss;
      const at = rng.below(pkts.length + 1);
      // Now and then a segment shaped differently (window, ack).
      const window = rng.chance(0.1) ? rng.below(4) : 1024;
      const ack = rng.chance(0.1) ? 2 : 1;
      const p = tcpPacket({
        v6,
        sport: f,
        seq,
        id: i,
        payload: rng.bytes(len),
        flags: 0x10,
        window,
        ack,
      });
      // Keep each flow in order: insert after every earlier segment of it.
      pkts.splice(Math.max(at, lastIndexOfFlow(pkts, f) + 1), 0, p);
      seq = (seq + len) >>> 0;
    }
  }
  return pack(pkts).buf;
}

function lastIndexOfFlow(pkts: Buffer[], sport: number): number {
  for (let i = pkts.length - 1; i >= 0; i -= 1) {
    const p = pkts[i] as Buffer;
    const ip = (p[0] as number) >> 4 === 6 ? 40 : 20;
    if (p.readUInt16BE(ip) === sport) return i;
  }
  return -1;
}

function packets(input: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let o = 0;
  while (o + 2 <= input.length) {
    const n = input.readUInt16BE(o);
    if (o + 2 + n > input.length) break;
    out.push(input.subarray(o + 2, o + 2 + n));
    o += 2 + n;
  }
  return out;
}

/** Addresses and ports of a TCP packet; one key for everything else. */
function flowKey(p: Buffer): string {
  if (p.length < 40) return 'other';
  const v = (p[0] as number) >> 4;
  const ip = v === 6 ? 40 : ((p[0] as number) & 15) * 4;
  const tcp = v === 6 ? p[6] === 6 : v === 4 && p[9] === 6 && (p.readUInt16BE(6) & 0x1fff) === 0;
  if (!tcp || ip < 20 || ip + 4 > p.length) return 'other';
  const a = v === 6 ? p.subarray(8, 40) : p.subarray(12, 20);
  return `${a.toString('hex')}/${p.subarray(ip, ip + 4).toString('hex')}`;
}

function masked(p: Buffer): string {
  const m = Buffer.from(p);
  if (coalescible(p, 0, p.length) !== null) {
    const v6 = (p[0] as number) >> 4 === 6;
    if (!v6) {
      m.writeUInt16BE(0, 4);
      m.writeUInt16BE(0, 10);
    }
    m.writeUInt16BE(0, (v6 ? 40 : 20) + 16);
  }
  return m.toString('hex');
}

export const offloadTarget: FuzzTarget = {
  name: 'tun/tcp-coalesce',
  seeds: () => [pack([tcpPacket({ seq: 1, payload: Buffer.alloc(100, 1) })]).buf],
  generate: randomBatch,
  fields(input: Buffer): Field[] {
    const fields: Field[] = [];
    let o = 0;
    while (o + 2 <= input.length && fields.length < 8) {
      const n = input.readUInt16BE(o);
      fields.push({ offset: o, size: 2, value: Math.min(n, input.length - o - 2) });
      o += 2 + n;
    }
    return fields;
  },
  run(input) {
    batches += 1;
    const before = coalescer.runs;
    const out = coalescer.coalesce(input, input.length);
    const entries = vnetEntries(out.buf, out.len);
    const expanded = entries.flatMap(resegment);
    const want = packets(input).map(masked).sort();
    const got = expanded.map(masked).sort();
    check(got.length === want.length, `${want.length} packets in, ${got.length} out`);
    for (let i = 0; i < got.length; i += 1) check(got[i] === want[i], 'a packet changed');
    // Within a flow nothing is reordered.
    const byFlow = (list: Buffer[]) => {
      const m = new Map<string, string[]>();
      for (const p of list) {
        const k = flowKey(p);
        m.set(k, [...(m.get(k) ?? []), masked(p)]);
      }
      return m;
    };
    const inFlows = byFlow(packets(input));
    for (const [k, seq] of byFlow(expanded)) {
      check(JSON.stringify(seq) === JSON.stringify(inFlows.get(k)), 'order changed within a flow');
    }
    runs += coalescer.runs - before;
    return coalescer.runs > before;
  },
  maxLength: 8192,
  weight: 0.5,
  stats: () => `${batches} batches, ${runs} runs coalesced`,
};
