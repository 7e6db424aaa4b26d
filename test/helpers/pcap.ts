/**
 * Reader for the classic pcap files tcpdump writes (Ethernet link type):
 * yields the UDP payloads with their addresses. Used to check what a
 * capture on a physical link shows an observer.
 */
import fs from 'node:fs';

export interface UdpFrame {
  src: string;
  dst: string;
  srcPort: number;
  dstPort: number;
  payload: Buffer;
}

export interface Capture {
  frames: number;
  udp: UdpFrame[];
  /** All captured bytes, for searching markers anywhere on the wire. */
  raw: Buffer;
}

export function readPcap(file: string): Capture {
  const buf = fs.readFileSync(file);
  if (buf.length < 24) return { frames: 0, udp: [], raw: buf };
  const magic = buf.readUInt32LE(0);
  const le = magic === 0xa1b2c3d4 || magic === 0xa1b23c4d;
  if (!le && buf.readUInt32BE(0) !== 0xa1b2c3d4 && buf.readUInt32BE(0) !== 0xa1b23c4d) {
    throw new Error(`${file}: not a pcap file`);
  }
  const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const linktype = u32(20);
  const udp: UdpFrame[] = [];
  let frames = 0;
  let o = 24;
  while (o + 16 <= buf.length) {
    const caplen = u32(o + 8);
    const start = o + 16;
    o = start + caplen;
    if (o > buf.length) break;
    frames += 1;
    let p = start;
    if (linktype === 1) {
      let type = buf.readUInt16BE(p + 12);
      p += 14;
      if (type === 0x8100) {
        type = buf.readUInt16BE(p + 2);
        p += 4;
      }
      if (type !== 0x0800 && type !== 0x86dd) continue;
    } else if (linktype === 113) {
      p += 16; // Linux cooked capture
    }
    const v = (buf[p] as number) >> 4;
    let proto: number;
    let src: string;
    let dst: string;
    let l4: number;
    if (v === 4) {
      const ihl = ((buf[p] as number) & 15) * 4;
      proto = buf[p + 9] as number;
      src = [...buf.subarray(p + 12, p + 16)].join('.');
      dst = [...buf.subarray(p + 16, p + 20)].join('.');
      l4 = p + ihl;
    } else if (v === 6) {
      proto = buf[p + 6] as number;
      src = buf.toString('hex', p + 8, p + 24);
      dst = buf.toString('hex', p + 24, p + 40);
      l4 = p + 40;
    } else continue;
    if (proto !== 17 || l4 + 8 > o) continue;
    udp.push({
      src,
      dst,
      srcPort: buf.readUInt16BE(l4),
      dstPort: buf.readUInt16BE(l4 + 2),
      payload: buf.subarray(l4 + 8, o),
    });
  }
  return { frames, udp, raw: buf };
}

/**
 * Split a UDP payload into DTLS records; null if it is not a sequence of
 * well-formed DTLS 1.x record headers. Returns [contentType, version].
 */
export function dtlsRecords(payload: Buffer): { type: number; version: number }[] | null {
  const out: { type: number; version: number }[] = [];
  let o = 0;
  while (o < payload.length) {
    if (o + 13 > payload.length) return null;
    const type = payload[o] as number;
    const version = payload.readUInt16BE(o + 1);
    const len = payload.readUInt16BE(o + 11);
    if (o + 13 + len > payload.length) return null;
    out.push({ type, version });
    o += 13 + len;
  }
  return out;
}
