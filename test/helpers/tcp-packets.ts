/**
 * TCP/IP packets for the coalescer's tests: a builder with correct
 * checksums, and a reference segmenter that does what the kernel does with
 * a vnet entry (virtio_net_hdr GSO) so tests can compare it with the
 * packets that went in.
 */
import { VNET_HDR_BYTES } from '../../src/tun/offload.js';

export interface TcpSpec {
  v6?: boolean;
  src?: string;
  dst?: string;
  sport?: number;
  dport?: number;
  seq: number;
  ack?: number;
  flags?: number;
  window?: number;
  /** TCP options (padded to 4 bytes by the caller). */
  options?: Buffer;
  payload: Buffer;
  tos?: number;
  ttl?: number;
  id?: number;
  df?: boolean;
}

export const ACK = 0x10;
export const PSH = 0x08;
export const SYN = 0x02;
export const FIN = 0x01;

function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

export function sum16(b: Buffer, from: number, to: number, initial = 0): number {
  let s = initial;
  for (let i = from; i + 1 < to; i += 2) s += b.readUInt16BE(i);
  if ((to - from) % 2 === 1) s += (b[to - 1] as number) << 8;
  return fold(s);
}

function addrBytes(a: string, v6: boolean): Buffer {
  if (!v6) return Buffer.from(a.split('.').map(Number));
  const parts = a.split('::');
  const head = parts[0] ? parts[0].split(':') : [];
  const tail = parts.length > 1 && parts[1] ? parts[1].split(':') : [];
  const words = [...head, ...Array(8 - head.length - tail.length).fill('0'), ...tail];
  const b = Buffer.alloc(16);
  words.forEach((w, i) => b.writeUInt16BE(parseInt(w, 16), i * 2));
  return b;
}

/** Full TCP checksum of the segment in `p` (IP header at 0). */
export function tcpChecksum(p: Buffer, v6: boolean): number {
  const ipHdr = v6 ? 40 : ((p[0] as number) & 15) * 4;
  const tcpLen = p.length - ipHdr;
  let s = 6 + tcpLen;
  s = sum16(p, v6 ? 8 : 12, v6 ? 40 : 20, s);
  const saved = p.readUInt16BE(ipHdr + 16);
  p.writeUInt16BE(0, ipHdr + 16);
  s = sum16(p, ipHdr, p.length, s);
  p.writeUInt16BE(saved, ipHdr + 16);
  return ~s & 0xffff;
}

export function ipv4Checksum(p: Buffer): number {
  const saved = p.readUInt16BE(10);
  p.writeUInt16BE(0, 10);
  const s = sum16(p, 0, 20);
  p.writeUInt16BE(saved, 10);
  return ~s & 0xffff;
}

export function tcpPacket(t: TcpSpec): Buffer {
  const v6 = t.v6 ?? false;
  const opts = t.options ?? Buffer.alloc(0);
  const ipHdr = v6 ? 40 : 20;
  const tcpHdr = 20 + opts.length;
  const p = Buffer.alloc(ipHdr + tcpHdr + t.payload.length);
  if (v6) {
    p.writeUInt32BE((6 << 28) | ((t.tos ?? 0) << 20), 0);
    p.writeUInt16BE(tcpHdr + t.payload.length, 4);
    p[6] = 6;
    p[7] = t.ttl ?? 64;
    addrBytes(t.src ?? 'fd00::1', true).copy(p, 8);
    addrBytes(t.dst ?? 'fd00::2', true).copy(p, 24);
  } else {
    p[0] = 0x45;
    p[1] = t.tos ?? 0;
    p.writeUInt16BE(p.length, 2);
    p.writeUInt16BE(t.id ?? 0, 4);
    p.writeUInt16BE(t.df === false ? 0 : 0x4000, 6);
    p[8] = t.ttl ?? 64;
    p[9] = 6;
    addrBytes(t.src ?? '10.0.0.1', false).copy(p, 12);
    addrBytes(t.dst ?? '10.0.0.2', false).copy(p, 16);
    p.writeUInt16BE(ipv4Checksum(p), 10);
  }
  p.writeUInt16BE(t.sport ?? 40000, ipHdr);
  p.writeUInt16BE(t.dport ?? 80, ipHdr + 2);
  p.writeUInt32BE(t.seq >>> 0, ipHdr + 4);
  p.writeUInt32BE((t.ack ?? 1) >>> 0, ipHdr + 8);
  p[ipHdr + 12] = (tcpHdr / 4) << 4;
  p[ipHdr + 13] = t.flags ?? ACK;
  p.writeUInt16BE(t.window ?? 1024, ipHdr + 14);
  opts.copy(p, ipHdr + 20);
  t.payload.copy(p, ipHdr + tcpHdr);
  p.writeUInt16BE(tcpChecksum(p, v6), ipHdr + 16);
  return p;
}

export function pack(packets: Buffer[]): { buf: Buffer; len: number } {
  const len = packets.reduce((s, p) => s + 2 + p.length, 0);
  const buf = Buffer.alloc(len);
  let o = 0;
  for (const p of packets) {
    buf.writeUInt16BE(p.length, o);
    p.copy(buf, o + 2);
    o += 2 + p.length;
  }
  return { buf, len };
}

export interface VnetEntry {
  flags: number;
  gsoType: number;
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
  packet: Buffer;
}

/** The entries of a vnet batch ([u16 len][hdr 10][packet]...); throws if malformed. */
export function vnetEntries(buf: Buffer, len: number): VnetEntry[] {
  const out: VnetEntry[] = [];
  let o = 0;
  while (o < len) {
    if (o + 2 > len) throw new Error(`truncated entry length at ${o}`);
    const n = buf.readUInt16BE(o);
    if (n < VNET_HDR_BYTES || o + 2 + n > len) throw new Error(`bad entry length ${n} at ${o}`);
    const h = o + 2;
    out.push({
      flags: buf[h] as number,
      gsoType: buf[h + 1] as number,
      hdrLen: buf.readUInt16LE(h + 2),
      gsoSize: buf.readUInt16LE(h + 4),
      csumStart: buf.readUInt16LE(h + 6),
      csumOffset: buf.readUInt16LE(h + 8),
      packet: Buffer.from(buf.subarray(h + VNET_HDR_BYTES, o + 2 + n)),
    });
    o += 2 + n;
  }
  return out;
}

/**
 * What the kernel makes of an entry: the packet itself (no GSO), or its
 * segments (TCP GSO): headers copied, sequence numbers advanced, IPv4 ids
 * incremented, lengths and checksums set, PSH on the last segment only
 * (if the entry had it). Checks that the partial checksum the entry
 * carries completes to a valid checksum of the whole.
 */
export function resegment(e: VnetEntry): Buffer[] {
  if (e.gsoType === 0) {
    if (e.flags !== 0) throw new Error('a plain entry asks for a checksum');
    return [e.packet];
  }
  const v6 = e.gsoType === 4;
  if (!v6 && e.gsoType !== 1) throw new Error(`gso type ${e.gsoType}`);
  if (e.flags !== 1) throw new Error('a GSO entry without NEEDS_CSUM');
  const p = e.packet;
  const ipHdr = v6 ? 40 : 20;
  if (e.csumStart !== ipHdr || e.csumOffset !== 16) throw new Error('checksum position');
  // The partial checksum (the pseudo-header sum) completes to a valid one.
  const full = ~sum16(p, ipHdr, p.length) & 0xffff;
  const whole = Buffer.from(p);
  whole.writeUInt16BE(full, ipHdr + 16);
  if (tcpChecksum(whole, v6) !== full) throw new Error('partial checksum does not complete');
  if (v6 && p.readUInt16BE(4) + 40 !== p.length) throw new Error('IPv6 payload length');
  if (!v6 && (p.readUInt16BE(2) !== p.length || ipv4Checksum(p) !== p.readUInt16BE(10))) {
    throw new Error('IPv4 length or header checksum');
  }
  const hdr = e.hdrLen;
  const tcp = ipHdr;
  const psh = ((p[tcp + 13] as number) & PSH) !== 0;
  const seq0 = p.readUInt32BE(tcp + 4);
  const id0 = v6 ? 0 : p.readUInt16BE(4);
  const out: Buffer[] = [];
  for (let o = hdr, k = 0; o < p.length; o += e.gsoSize, k += 1) {
    const chunk = p.subarray(o, Math.min(o + e.gsoSize, p.length));
    const s = Buffer.alloc(hdr + chunk.length);
    p.copy(s, 0, 0, hdr);
    chunk.copy(s, hdr);
    const last = o + e.gsoSize >= p.length;
    s.writeUInt32BE((seq0 + k * e.gsoSize) >>> 0, tcp + 4);
    s[tcp + 13] = ((s[tcp + 13] as number) & ~PSH) | (last && psh ? PSH : 0);
    if (v6) {
      s.writeUInt16BE(s.length - 40, 4);
    } else {
      s.writeUInt16BE(s.length, 2);
      s.writeUInt16BE((id0 + k) & 0xffff, 4);
      s.writeUInt16BE(ipv4Checksum(s), 10);
    }
    s.writeUInt16BE(tcpChecksum(s, v6), tcp + 16);
    out.push(s);
  }
  return out;
}
