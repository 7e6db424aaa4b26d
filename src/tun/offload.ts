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
  /** Its segments: segs[0, n); the array is reused from batch to batch. */
  segs: Segment[];
  n: number;
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
  const s = newSegment();
  return parseSegment(b, off, len, s) ? s : null;
}

function newSegment(): Segment {
  return { off: 0, len: 0, ipHdr: 0, tcpHdr: 0, seq: 0, payload: 0, psh: false, v6: false };
}

/** coalescible() into a reused object: true if the segment may join a run. */
function parseSegment(b: Buffer, off: number, len: number, into: Segment): boolean {
  if (len < 1) return false;
  const version = (b[off] as number) >> 4;
  let ipHdr: number;
  let v6: boolean;
  if (version === 4) {
    if (len < 40 || b[off] !== 0x45) return false; // no IP options
    if (u16(b, off + 2) !== len) return false;
    if ((u16(b, off + 6) & 0x3fff) !== 0) return false; // MF or a fragment offset
    if (b[off + 9] !== 6) return false;
    if (ipv4HeaderSum(b, off) !== 0xffff) return false;
    ipHdr = 20;
    v6 = false;
  } else if (version === 6) {
    if (len < 60 || b[off + 6] !== 6) return false; // TCP right after the fixed header
    if (u16(b, off + 4) + 40 !== len) return false;
    ipHdr = 40;
    v6 = true;
  } else {
    return false;
  }
  const t = off + ipHdr;
  const tcpHdr = ((b[t + 12] as number) >> 4) * 4;
  if (tcpHdr < 20 || ipHdr + tcpHdr >= len) return false; // a payload is needed
  const flags = b[t + 13] as number;
  if ((flags & ~TCP_PSH) !== TCP_ACK) return false; // ACK, maybe PSH; nothing else
  into.off = off;
  into.len = len;
  into.ipHdr = ipHdr;
  into.tcpHdr = tcpHdr;
  into.seq = u32(b, t + 4);
  into.payload = len - ipHdr - tcpHdr;
  into.psh = (flags & TCP_PSH) !== 0;
  into.v6 = v6;
  return true;
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
function endFlow(b: Buffer, off: number, len: number, runs: Run[], open: OpenRuns): void {
  if (open.count === 0 || len < 20) return;
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
  for (let k = 0; k < open.count; k += 1) {
    const r = runs[open.at[k] as number] as Run;
    const f = r.segs[0] as Segment;
    if (f.v6 !== v6) continue;
    const a = v6 ? 8 : 12;
    const addrLen = v6 ? 32 : 8;
    if (b.compare(b, f.off + a, f.off + a + addrLen, off + a, off + a + addrLen) !== 0) continue;
    const ft = f.off + f.ipHdr;
    if (b.compare(b, ft, ft + 4, off + ip, off + ip + 4) !== 0) continue;
    r.closed = true;
    open.remove(k);
    return;
  }
}

/** The runs still open in a batch (at most MAX_OPEN_RUNS), oldest first. */
class OpenRuns {
  readonly at = new Int32Array(MAX_OPEN_RUNS);
  count = 0;

  remove(k: number): void {
    this.at.copyWithin(k, k + 1, this.count);
    this.count -= 1;
  }

  add(run: number): void {
    if (this.count >= MAX_OPEN_RUNS) this.remove(0);
    this.at[this.count] = run;
    this.count += 1;
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
  // Work state, reused from batch to batch (nothing is allocated per
  // packet once a batch of this size has been seen): where each packet
  // is, its run (-1: none), its parsed segment, and the runs.
  private offs = new Int32Array(64);
  private lens = new Int32Array(64);
  private runOf = new Int32Array(64);
  private readonly segPool: Segment[] = [];
  private readonly runPool: Run[] = [];
  private readonly open = new OpenRuns();

  /**
   * Convert the packed batch `packed[0, len)` ([u16 len][packet]...) into
   * vnet entries. Returns the output (valid until the next call) and its
   * length. A malformed batch (a length running past `len`) is cut where
   * it breaks, as the device's own writer would refuse it.
   */
  coalesce(packed: Buffer, len: number): { buf: Buffer; len: number } {
    // Pass 1: find the packets, and the runs among them.
    const runs = this.runPool;
    const open = this.open;
    open.count = 0;
    let nRuns = 0;
    let count = 0;
    let o = 0;
    while (o + 2 <= len) {
      const n = u16(packed, o);
      if (o + 2 + n > len) break;
      const i = count;
      if (i === this.offs.length) this.grow();
      count += 1;
      this.offs[i] = o + 2;
      this.lens[i] = n;
      this.runOf[i] = -1;
      o += 2 + n;
      const s = this.segPool[i] ?? (this.segPool[i] = newSegment());
      if (!parseSegment(packed, o - n, n, s)) {
        // Another packet of an open run's flow (a FIN, an RST, a pure
        // ACK...) must not be overtaken by later segments: that run ends.
        endFlow(packed, o - n, n, runs, open);
        continue;
      }
      let joined = false;
      // At most one open run per flow: a segment of it either extends
      // that run or ends it, so nothing in a flow is ever reordered.
      for (let k = 0; k < open.count; k += 1) {
        const ri = open.at[k] as number;
        const r = runs[ri] as Run;
        const f = r.segs[0] as Segment;
        if (!sameTuple(packed, f, s)) continue;
        if (
          !r.closed &&
          sameShape(packed, f, s) &&
          s.seq === r.nextSeq &&
          s.payload <= r.mss &&
          r.n < MAX_RUN_SEGMENTS &&
          r.bytes + s.payload <= MAX_RUN_BYTES
        ) {
          r.segs[r.n] = s;
          r.n += 1;
          r.bytes += s.payload;
          r.nextSeq = (r.nextSeq + s.payload) >>> 0;
          // A shorter segment or PSH ends the run (as the sender's TSO
          // would have ended it).
          if (s.payload < r.mss || s.psh) r.closed = true;
          this.runOf[i] = ri;
          joined = true;
        } else {
          // Out of sequence or shaped differently: this flow's run ends.
          r.closed = true;
          open.remove(k);
        }
        break;
      }
      if (joined) continue;
      const r =
        runs[nRuns] ??
        (runs[nRuns] = { first: 0, segs: [], n: 0, nextSeq: 0, mss: 0, bytes: 0, closed: false });
      r.first = i;
      r.segs[0] = s;
      r.n = 1;
      r.nextSeq = (s.seq + s.payload) >>> 0;
      r.mss = s.payload;
      r.bytes = s.ipHdr + s.tcpHdr + s.payload;
      r.closed = s.psh;
      this.runOf[i] = nRuns;
      open.add(nRuns);
      nRuns += 1;
    }

    // Pass 2: write the entries, each run where its first segment was.
    const need = len + count * VNET_HDR_BYTES;
    if (this.out.length < need) this.out = Buffer.alloc(Math.max(need, 2 * this.out.length));
    const out = this.out;
    let w = 0;
    for (let i = 0; i < count; i += 1) {
      const ri = this.runOf[i] as number;
      const r = ri >= 0 ? (runs[ri] as Run) : null;
      if (r !== null && r.n > 1) {
        if (r.first === i) {
          w = writeRun(packed, r, out, w);
          this.runs += 1;
          this.segments += r.n;
        }
        continue;
      }
      const n = this.lens[i] as number;
      const from = this.offs[i] as number;
      const entry = VNET_HDR_BYTES + n;
      out[w] = entry >>> 8;
      out[w + 1] = entry & 0xff;
      out.fill(0, w + 2, w + 2 + VNET_HDR_BYTES);
      packed.copy(out, w + 2 + VNET_HDR_BYTES, from, from + n);
      w += 2 + entry;
    }
    return { buf: out, len: w };
  }

  private grow(): void {
    const size = 2 * this.offs.length;
    const offs = new Int32Array(size);
    const lens = new Int32Array(size);
    const runOf = new Int32Array(size);
    offs.set(this.offs);
    lens.set(this.lens);
    runOf.set(this.runOf);
    this.offs = offs;
    this.lens = lens;
    this.runOf = runOf;
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
  for (let k = 0; k < r.n; k += 1) {
    const s = r.segs[k] as Segment;
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
  const last = r.segs[r.n - 1] as Segment;
  out[t + 13] = ((out[t + 13] as number) & ~TCP_PSH) | (last.psh ? TCP_PSH : 0);
  // NEEDS_CSUM: the checksum field holds the pseudo-header sum; the kernel
  // completes it (per segment, if it segments).
  out.writeUInt16BE(pseudoHeaderSum(out, ip, f.v6, total - f.ipHdr), t + 16);
  return p;
}
