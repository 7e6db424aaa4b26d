/**
 * TCP coalescing for writes to a TUN device opened with IFF_VNET_HDR.
 *
 * A batch of packets bound for the kernel (what an exit or a client
 * writes after peeling a batch of cells) often holds runs of segments of
 * one TCP flow, back to back in sequence. Written one by one, each
 * segment crosses the kernel's forwarding, NAT and TCP receive paths on
 * its own. Written as one "super-packet" with a virtio_net_hdr asking for
 * TCP segmentation (GSO), the run crosses them once and is cut into the
 * original segments only where a device needs it, as Linux's own GRO does
 * for packets from a NIC. wireguard-go does the same on its TUN.
 *
 * Output: a packed batch [u16 len][virtio_net_hdr 10][packet]..., one
 * entry per packet that was not coalesced (header all zeros, packet
 * unchanged) and one per run (header: NEEDS_CSUM, GSO_TCPV4/6, the
 * segment size; packet: the first segment's headers with the lengths of
 * the whole run, then every payload in order). A run keeps the position
 * of its first segment; the order within a flow never changes.
 *
 * Only plain segments coalesce: IPv4 without options or fragmentation,
 * IPv6 without extension headers; TCP with ACK and nothing else but PSH
 * (which ends a run), a payload, and the same addresses, ports, ack
 * number, window, urgent pointer, options, TOS/traffic class, TTL/hop
 * limit and DF as the run's first segment; each segment as long as the
 * first, but the last.
 * Everything else passes through unchanged. The input comes from the
 * network (peeled cells): every length is checked, nothing throws.
 */

/** Bytes of struct virtio_net_hdr (no num_buffers): the TUN default. */
export const VNET_HDR_BYTES = 10;

const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6 = 4;

const TCP_PSH = 0x08;
const TCP_ACK = 0x10;

/** A run never grows past this many segments. */
export const MAX_RUN_SEGMENTS = 64;
/** Nor past this many bytes of packet (an entry's u16 length holds the header too). */
export const MAX_RUN_BYTES = 0xffff - VNET_HDR_BYTES;
/** Runs open at once in one batch (flows interleaved in it). */
const MAX_OPEN_RUNS = 8;

/** Where a coalescible segment's parts are. */
interface Segment {
  off: number;
  len: number;
  ipHdr: number;
  tcpHdr: number;
  seq: number;
  payload: number;
  psh: boolean;
  v6: boolean;
}

interface Run {
  /** Index (in the batch) of the first segment. */
  first: number;
  segs: Segment[];
  nextSeq: number;
  mss: number;
  bytes: number;
  closed: boolean;
}

function u16(b: Buffer, o: number): number {
  return ((b[o] as number) << 8) | (b[o + 1] as number);
}

function u32(b: Buffer, o: number): number {
  return (
    (((b[o] as number) << 24) |
      ((b[o + 1] as number) << 16) |
      ((b[o + 2] as number) << 8) |
      (b[o + 3] as number)) >>>
    0
  );
}

/** The segment at packed[off, off+len) if it may join a run, else null. */
export function coalescible(b: Buffer, off: number, len: number): Segment | null {
  if (len < 1) return null;
  const version = (b[off] as number) >> 4;
  let ipHdr: number;
  let v6: boolean;
  if (version === 4) {
    if (len < 40 || b[off] !== 0x45) return null; // no IP options
    if (u16(b, off + 2) !== len) return null;
    if ((u16(b, off + 6) & 0x3fff) !== 0) return null; // MF or a fragment offset
    if (b[off + 9] !== 6) return null;
    if (ipv4HeaderSum(b, off) !== 0xffff) return null;
    ipHdr = 20;
    v6 = false;
  } else if (version === 6) {
    if (len < 60 || b[off + 6] !== 6) return null; // TCP right after the fixed header
    if (u16(b, off + 4) + 40 !== len) return null;
    ipHdr = 40;
    v6 = true;
  } else {
    return null;
  }
  const t = off + ipHdr;
  const tcpHdr = ((b[t + 12] as number) >> 4) * 4;
  if (tcpHdr < 20 || ipHdr + tcpHdr >= len) return null; // a payload is needed
  const flags = b[t + 13] as number;
  if ((flags & ~TCP_PSH) !== TCP_ACK) return null; // ACK, maybe PSH; nothing else
  return {
    off,
    len,
    ipHdr,
    tcpHdr,
    seq: u32(b, t + 4),
    payload: len - ipHdr - tcpHdr,
    psh: (flags & TCP_PSH) !== 0,
    v6,
  };
}

/** True if `s` is of the same flow as `f`: IP version, addresses, ports. */
function sameTuple(b: Buffer, f: Segment, s: Segment): boolean {
  if (f.v6 !== s.v6) return false;
  const a = f.v6 ? 8 : 12;
  const n = f.v6 ? 32 : 8;
  if (b.compare(b, f.off + a, f.off + a + n, s.off + a, s.off + a + n) !== 0) return false;
  const ft = f.off + f.ipHdr;
  const st = s.off + s.ipHdr;
  return b.compare(b, ft, ft + 4, st, st + 4) === 0;
}

/**
 * True if `s` (of `f`'s flow) is shaped like `f`: the same ack number,
 * window, urgent pointer, options and IP header fields (lengths, ids and
 * checksums aside), so that segmenting `f`'s headers gives back `s`'s.
 */
function sameShape(b: Buffer, f: Segment, s: Segment): boolean {
  if (f.tcpHdr !== s.tcpHdr) return false;
  if (f.v6) {
    // version, traffic class, flow label; next header, hop limit
    if (b.compare(b, f.off, f.off + 4, s.off, s.off + 4) !== 0) return false;
    if (b.compare(b, f.off + 6, f.off + 8, s.off + 6, s.off + 8) !== 0) return false;
  } else {
    if (b[f.off + 1] !== b[s.off + 1]) return false; // TOS (ECN included)
    if (b[f.off + 6] !== b[s.off + 6]) return false; // DF
    if (b[f.off + 8] !== b[s.off + 8]) return false; // TTL
  }
  const ft = f.off + f.ipHdr;
  const st = s.off + s.ipHdr;
  // ack number; data offset; flags but PSH; window
  if (b.compare(b, ft + 8, ft + 13, st + 8, st + 13) !== 0) return false;
  if (((b[ft + 13] as number) | TCP_PSH) !== ((b[st + 13] as number) | TCP_PSH)) return false;
  if (b.compare(b, ft + 14, ft + 16, st + 14, st + 16) !== 0) return false;
  // (the checksum differs; the urgent pointer must not: it means nothing
  // without URG, but segmentation copies the first one to every segment)
  if (b.compare(b, ft + 18, ft + 20, st + 18, st + 20) !== 0) return false;
  return b.compare(b, ft + 20, ft + f.tcpHdr, st + 20, st + s.tcpHdr) === 0;
}

/**
 * If packed[off, off+len) is a TCP packet (any shape) of the flow of an
 * open run, close that run.
 */
function endFlow(b: Buffer, off: number, len: number, runs: Run[], open: number[]): void {
  if (open.length === 0 || len < 20) return;
  const version = (b[off] as number) >> 4;
  let ip: number;
  if (version === 4) {
    ip = ((b[off] as number) & 15) * 4;
    if (b[off + 9] !== 6 || (u16(b, off + 6) & 0x1fff) !== 0) return;
  } else if (version === 6) {
    ip = 40;
    if (b[off + 6] !== 6) return;
  } else {
    return;
  }
  if (ip < 20 || off + ip + 4 > off + len) return;
  const v6 = version === 6;
  for (let k = 0; k < open.length; k += 1) {
    const r = runs[open[k] as number] as Run;
    const f = r.segs[0] as Segment;
    if (f.v6 !== v6) continue;
    const a = v6 ? 8 : 12;
    const addrLen = v6 ? 32 : 8;
    if (b.compare(b, f.off + a, f.off + a + addrLen, off + a, off + a + addrLen) !== 0) continue;
    const ft = f.off + f.ipHdr;
    if (b.compare(b, ft, ft + 4, off + ip, off + ip + 4) !== 0) continue;
    r.closed = true;
    open.splice(k, 1);
    return;
  }
}

/** One's-complement sum (folded, not inverted) of the 20-byte IPv4 header. */
function ipv4HeaderSum(b: Buffer, o: number): number {
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += u16(b, o + i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** Folded, not inverted, pseudo-header sum of a TCP segment of `tcpLen` bytes. */
function pseudoHeaderSum(b: Buffer, ip: number, v6: boolean, tcpLen: number): number {
  let sum = 6 + (tcpLen & 0xffff) + (tcpLen >>> 16);
  const from = v6 ? ip + 8 : ip + 12;
  const to = v6 ? ip + 40 : ip + 20;
  for (let i = from; i < to; i += 2) sum += u16(b, i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/**
 * Coalesces packed batches; holds its output buffer (grown as needed,
 * never beyond what one input batch needs) and per-batch work arrays.
 */
export class TcpCoalescer {
  private out = Buffer.alloc(0);
  /** Coalesced runs written by the last calls (for counters). */
  runs = 0;
  /** Segments that went into those runs. */
  segments = 0;

  /**
   * Convert the packed batch `packed[0, len)` ([u16 len][packet]...) into
   * vnet entries. Returns the output (valid until the next call) and its
   * length. A malformed batch (a length running past `len`) is cut where
   * it breaks, as the device's own writer would refuse it.
   */
  coalesce(packed: Buffer, len: number): { buf: Buffer; len: number } {
    // Pass 1: find the packets, and the runs among them.
    const offs: number[] = [];
    const lens: number[] = [];
    const runOf: number[] = []; // run index, or -1
    const runs: Run[] = [];
    const open: number[] = []; // indices into runs, at most MAX_OPEN_RUNS
    let o = 0;
    while (o + 2 <= len) {
      const n = u16(packed, o);
      if (o + 2 + n > len) break;
      const i = offs.length;
      offs.push(o + 2);
      lens.push(n);
      runOf.push(-1);
      o += 2 + n;
      const s = coalescible(packed, o - n, n);
      if (s === null) {
        // Another packet of an open run's flow (a FIN, an RST, a pure
        // ACK...) must not be overtaken by later segments: that run ends.
        endFlow(packed, o - n, n, runs, open);
        continue;
      }
      let joined = false;
      // At most one open run per flow: a segment of it either extends
      // that run or ends it, so nothing in a flow is ever reordered.
      for (let k = 0; k < open.length; k += 1) {
        const r = runs[open[k] as number] as Run;
        const f = r.segs[0] as Segment;
        if (!sameTuple(packed, f, s)) continue;
        if (
          !r.closed &&
          sameShape(packed, f, s) &&
          s.seq === r.nextSeq &&
          s.payload <= r.mss &&
          r.segs.length < MAX_RUN_SEGMENTS &&
          r.bytes + s.payload <= MAX_RUN_BYTES
        ) {
          r.segs.push(s);
          r.bytes += s.payload;
          r.nextSeq = (r.nextSeq + s.payload) >>> 0;
          // A shorter segment or PSH ends the run (as the sender's TSO
          // would have ended it).
          if (s.payload < r.mss || s.psh) r.closed = true;
          runOf[i] = open[k] as number;
          joined = true;
        } else {
          // Out of sequence or shaped differently: this flow's run ends.
          r.closed = true;
          open.splice(k, 1);
        }
        break;
      }
      if (joined) continue;
      const r: Run = {
        first: i,
        segs: [s],
        nextSeq: (s.seq + s.payload) >>> 0,
        mss: s.payload,
        bytes: s.ipHdr + s.tcpHdr + s.payload,
        closed: s.psh,
      };
      runs.push(r);
      runOf[i] = runs.length - 1;
      if (open.length >= MAX_OPEN_RUNS) open.shift();
      open.push(runs.length - 1);
    }

    // Pass 2: write the entries, each run where its first segment was.
    const need = len + offs.length * VNET_HDR_BYTES;
    if (this.out.length < need) this.out = Buffer.alloc(Math.max(need, 2 * this.out.length));
    const out = this.out;
    let w = 0;
    for (let i = 0; i < offs.length; i += 1) {
      const ri = runOf[i] as number;
      const r = ri >= 0 ? (runs[ri] as Run) : null;
      if (r !== null && r.segs.length > 1) {
        if (r.first === i) {
          w = writeRun(packed, r, out, w);
          this.runs += 1;
          this.segments += r.segs.length;
        }
        continue;
      }
      const n = lens[i] as number;
      const entry = VNET_HDR_BYTES + n;
      out[w] = entry >>> 8;
      out[w + 1] = entry & 0xff;
      out.fill(0, w + 2, w + 2 + VNET_HDR_BYTES);
      packed.copy(out, w + 2 + VNET_HDR_BYTES, offs[i], (offs[i] as number) + n);
      w += 2 + entry;
    }
    return { buf: out, len: w };
  }
}

/** Write run `r` as one vnet entry at out[w]; returns the new end. */
function writeRun(b: Buffer, r: Run, out: Buffer, w: number): number {
  const f = r.segs[0] as Segment;
  const hdr = f.ipHdr + f.tcpHdr;
  const total = r.bytes; // headers once, every payload
  const entry = VNET_HDR_BYTES + total;
  out[w] = entry >>> 8;
  out[w + 1] = entry & 0xff;
  const v = w + 2;
  // struct virtio_net_hdr, little-endian: flags, gso_type, hdr_len,
  // gso_size, csum_start, csum_offset.
  out[v] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  out[v + 1] = f.v6 ? VIRTIO_NET_HDR_GSO_TCPV6 : VIRTIO_NET_HDR_GSO_TCPV4;
  out.writeUInt16LE(hdr, v + 2);
  out.writeUInt16LE(r.mss, v + 4);
  out.writeUInt16LE(f.ipHdr, v + 6);
  out.writeUInt16LE(16, v + 8);
  const ip = v + VNET_HDR_BYTES;
  b.copy(out, ip, f.off, f.off + hdr);
  let p = ip + hdr;
  for (const s of r.segs) {
    const from = s.off + s.ipHdr + s.tcpHdr;
    b.copy(out, p, from, from + s.payload);
    p += s.payload;
  }
  if (f.v6) {
    out.writeUInt16BE(total - 40, ip + 4);
  } else {
    out.writeUInt16BE(total, ip + 2);
    out.writeUInt16BE(0, ip + 10);
    out.writeUInt16BE(~ipv4HeaderSum(out, ip) & 0xffff, ip + 10);
  }
  const t = ip + f.ipHdr;
  // PSH (and only PSH) as the last segment had it.
  const last = r.segs[r.segs.length - 1] as Segment;
  out[t + 13] = ((out[t + 13] as number) & ~TCP_PSH) | (last.psh ? TCP_PSH : 0);
  // NEEDS_CSUM: the checksum field holds the pseudo-header sum; the kernel
  // completes it (per segment, if it segments).
  out.writeUInt16BE(pseudoHeaderSum(out, ip, f.v6, total - f.ipHdr), t + 16);
  return p;
}
