/**
 * The datagram seam: one socket per node, shared by every peer in both
 * the dialing and the listening role. Sending is batch-shaped (a packed
 * batch of datagrams for one destination per call), which lets
 * `UdpTransport` hand a whole batch to one sendmmsg() without touching the
 * layers above. `UdpTransport` is the real one; `MemoryNetwork` is the in-memory
 * twin for unit tests and the simulator.
 */
import type { Clock } from '../time/clock.js';
import net from 'node:net';
import { loadUdp, type NativeUdp } from '../native/binding.js';

/**
 * One received datagram. `data` may be a view of a buffer the transport
 * reuses: it is valid only during the call (copy what must outlive it).
 */
export type DatagramReceiver = (data: Buffer, host: string, port: number) => void;

export interface DatagramTransport {
  /**
   * Bind and start delivering datagrams to `receiver`; `onBatchEnd` runs
   * after each batch of them (one recvmmsg(), or one datagram), while
   * sends are still staged: the point to flush what the batch produced.
   */
  start(receiver: DatagramReceiver, onBatchEnd?: () => void): Promise<void>;
  /** The bound address (after start). */
  address(): { host: string; port: number };
  /**
   * Send every datagram of a packed batch ([u16 len][bytes]...) to one
   * destination. The batch buffer may be reused as soon as this returns.
   */
  sendPacked(packed: Buffer, len: number, host: string, port: number): void;
  /** Send one datagram (copied if the implementation needs to keep it). */
  sendOne(data: Buffer, host: string, port: number): void;
  close(): void;
  /** Socket counters for status output, where the transport has them. */
  stats?(): object;
}

/** 7 MB socket buffers: wireguard-go measured about +29% from this alone. */
export const SOCKET_BUFFER_BYTES = 7 * 1024 * 1024;

/** Datagrams per recvmmsg() (one receiver batch). */
const READ_BATCH = 64;
/**
 * Receive slot size: links send at most LINK_DATAGRAM_BYTES (1452); a
 * longer datagram is dropped and counted (stats().oversize).
 */
const READ_DATAGRAM_BYTES = 2048;
/** Bound of each address cache; a full cache is cleared, not evicted. */
const ADDRESS_CACHE_ENTRIES = 4096;
/**
 * Sends made while a received batch is being handled are staged here and
 * leave together once the batch is done (or the stage is full).
 */
const STAGE_BYTES = 256 * 1024;
/**
 * UDP segmentation offloads, on by default where the kernel has them:
 * GSO sends a run of equal-size datagrams to one peer as one kernel send,
 * segmented as late as the path allows; GRO lets the kernel hand a run
 * from one peer to a single recvmmsg() slot. Together about +10% on a
 * 3-hop circuit on one machine (npm run bench). The bytes on the wire are
 * the same datagrams either way; a packet capture on a GSO-capable device
 * (veth) may show a run as one frame. SHALLOT_UDP_GSO=0 / SHALLOT_UDP_GRO=0
 * turn them off (for comparisons and odd kernels).
 */
const USE_GSO = process.env.SHALLOT_UDP_GSO !== '0';
const USE_GRO = process.env.SHALLOT_UDP_GRO !== '0';

interface Destination {
  family: 4 | 6;
  addr: Buffer;
  scopeId: number;
  /** Group header start for NativeUdp.sendGroups: family, addr (, scope). */
  head: Buffer;
}

/** A cached IPv6 source: its bytes as four int32 words and a scope id. */
interface V6Source {
  w0: number;
  w1: number;
  w2: number;
  w3: number;
  scope: number;
  host: string;
}

/** Counters of a UdpTransport: the native socket's, plus bad destinations in sendErrors. */
export type UdpTransportStats = ReturnType<NativeUdp['stats']>;

function int32At(b: Buffer, o: number): number {
  return (
    ((b[o] as number) << 24) |
    ((b[o + 1] as number) << 16) |
    ((b[o + 2] as number) << 8) |
    (b[o + 3] as number)
  );
}

/**
 * The real transport: a native socket (src/native/udp_addon.c) read with
 * recvmmsg() on Node's loop and written with sendmmsg(), so a batch costs
 * one JS call and one syscall instead of one of each per datagram (and a
 * run of equal-size datagrams to one peer as one UDP GSO message where the
 * kernel has it).
 *
 * The receiver gets each datagram as a view of the addon's reused buffer:
 * it is valid only during the call (the endpoint hands it to DTLS, which
 * copies). Source addresses are turned into host strings through a cache,
 * so a known peer costs no string per datagram.
 *
 * What the receiver sends while a received batch is handed out (a relay
 * forwards each datagram's cells as it goes) is copied to a stage and sent
 * in one native call when the batch is done, so forwarding is batched too.
 * Order is kept; close() sends what is staged first.
 */
export class UdpTransport implements DatagramTransport {
  private readonly udp: NativeUdp;
  private fd = -1;
  private started = false;
  private bound = { host: '', port: 0 };
  private receiver: DatagramReceiver | undefined;
  private onBatchEnd: (() => void) | undefined;
  private readonly destinations = new Map<string, Destination | null>();
  private readonly hosts4 = new Map<number, string>();
  private readonly hosts6 = new Map<number, V6Source>();
  private final: UdpTransportStats | undefined;
  /** Datagrams that could not be sent because the host is not an IP address. */
  private badDestinations = 0;
  /** True while a received batch is handed out: sends are staged. */
  private inBatch = false;
  private readonly stage = Buffer.alloc(STAGE_BYTES);
  private stageLen = 0;
  /** Where the length field of the last staged group is (-1: none), and its peer. */
  private lastGroup = -1;
  private lastDest: Destination | null = null;
  private lastPort = 0;

  constructor(
    private readonly host: string,
    private readonly port: number,
  ) {
    this.udp = loadUdp();
  }

  start(receiver: DatagramReceiver, onBatchEnd?: () => void): Promise<void> {
    if (this.started) return Promise.reject(new Error('UdpTransport already started'));
    this.onBatchEnd = onBatchEnd;
    try {
      const family = net.isIPv6(this.host) ? 6 : 4;
      const s = this.udp.open(family, this.host, this.port, SOCKET_BUFFER_BYTES, USE_GSO, USE_GRO);
      this.started = true;
      this.fd = s.fd;
      this.bound = { host: s.address, port: s.port };
      this.receiver = receiver;
      const fd = s.fd;
      this.udp.startReading(fd, READ_BATCH, READ_DATAGRAM_BYTES, (buf, len, count) =>
        this.onDatagrams(fd, buf, len, count),
      );
      return Promise.resolve();
    } catch (e) {
      this.close();
      this.started = false;
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
  }

  address(): { host: string; port: number } {
    return this.bound;
  }

  sendPacked(packed: Buffer, len: number, host: string, port: number): void {
    if (this.fd < 0) return;
    const d = this.destination(host);
    if (d === null) {
      this.badDestinations += countPacked(packed, len);
      return;
    }
    if (this.inBatch) {
      checkPacked(packed, len);
      const o = this.stageGroup(d, port, len);
      if (o >= 0) {
        packed.copy(this.stage, o, 0, len);
        return;
      }
    }
    this.udp.sendBatch(this.fd, packed, len, d.family, d.addr, port, d.scopeId);
  }

  sendOne(data: Buffer, host: string, port: number): void {
    if (this.fd < 0) return;
    const d = this.destination(host);
    if (d === null) {
      this.badDestinations += 1;
      return;
    }
    if (this.inBatch && data.length <= 0xffff) {
      const o = this.stageGroup(d, port, 2 + data.length);
      if (o >= 0) {
        this.stage.writeUInt16BE(data.length, o);
        data.copy(this.stage, o + 2);
        return;
      }
    }
    this.udp.sendTo(this.fd, data, d.family, d.addr, port, d.scopeId);
  }

  /**
   * Reserve a group of `len` bytes for `d:port` in the stage and return
   * where its bytes go, or -1 if it cannot be staged (too big; whatever
   * was staged has been sent, so order is kept).
   */
  private stageGroup(d: Destination, port: number, len: number): number {
    if ((port & 0xffff) !== port) throw new RangeError(`port must be 0 to 65535, got ${port}`);
    const s = this.stage;
    // Back to back to the same peer (a relay forwards each datagram's
    // cells as it goes): one longer group, so that the native send can
    // make a GSO run of them.
    if (
      this.lastGroup >= 0 &&
      this.lastDest === d &&
      this.lastPort === port &&
      this.stageLen + len <= s.length
    ) {
      const o = this.stageLen;
      s.writeUInt32BE(s.readUInt32BE(this.lastGroup) + len, this.lastGroup);
      this.stageLen = o + len;
      return o;
    }
    const head = d.head.length + 6;
    if (this.stageLen + head + len > s.length) {
      this.flushStage();
      if (head + len > s.length) return -1;
    }
    let o = this.stageLen;
    o += d.head.copy(s, o);
    s[o] = port >>> 8;
    s[o + 1] = port & 0xff;
    s.writeUInt32BE(len, o + 2);
    this.lastGroup = o + 2;
    this.lastDest = d;
    this.lastPort = port;
    o += 6;
    this.stageLen = o + len;
    return o;
  }

  private flushStage(): void {
    const len = this.stageLen;
    this.stageLen = 0;
    this.lastGroup = -1;
    this.lastDest = null;
    if (len > 0 && this.fd >= 0) this.udp.sendGroups(this.fd, this.stage, len);
  }

  /** Datagrams lost on the way out (kernel buffer full, refused, bad host). */
  get sendErrors(): number {
    const s = this.stats();
    return s.sendDropped + s.sendErrors;
  }

  /** Counters of the socket (the last ones once closed). */
  stats(): UdpTransportStats {
    const base =
      this.fd >= 0
        ? this.udp.stats(this.fd)
        : (this.final ?? {
            received: 0,
            oversize: 0,
            errors: 0,
            callbacks: 0,
            sent: 0,
            sendDropped: 0,
            sendErrors: 0,
            reading: false,
            lastError: '',
            lastSendError: '',
            gso: false,
            gsoSends: 0,
            gsoFallbacks: 0,
            gsoError: '',
          });
    return { ...base, sendErrors: base.sendErrors + this.badDestinations };
  }

  close(): void {
    const fd = this.fd;
    if (fd < 0) return;
    // What the receiver staged before closing (e.g. CLOSE messages) leaves.
    this.flushStage();
    try {
      this.final = { ...this.udp.stats(fd), reading: false };
    } catch {
      /* keep the previous snapshot */
    }
    this.fd = -1;
    this.receiver = undefined;
    try {
      this.udp.close(fd);
    } catch {
      /* already closed */
    }
  }

  private destination(host: string): Destination | null {
    let d = this.destinations.get(host);
    if (d === undefined) {
      const parsed = this.udp.parseAddress(host);
      d = parsed ? destinationOf(parsed.family, parsed.addr, parsed.scopeId) : null;
      if (this.destinations.size >= ADDRESS_CACHE_ENTRIES) this.destinations.clear();
      this.destinations.set(host, d);
    }
    return d;
  }

  private host4(buf: Buffer, o: number): string {
    const key = int32At(buf, o);
    let h = this.hosts4.get(key);
    if (h === undefined) {
      h = `${buf[o]}.${buf[o + 1]}.${buf[o + 2]}.${buf[o + 3]}`;
      if (this.hosts4.size >= ADDRESS_CACHE_ENTRIES) this.hosts4.clear();
      this.hosts4.set(key, h);
    }
    return h;
  }

  private host6(buf: Buffer, o: number): string {
    const w0 = int32At(buf, o);
    const w1 = int32At(buf, o + 4);
    const w2 = int32At(buf, o + 8);
    const w3 = int32At(buf, o + 12);
    const scope = int32At(buf, o + 16);
    // The low words vary most between peers (interface ids); the hash only
    // picks the slot, the words decide a hit.
    const key = (Math.imul(w3 ^ scope, 0x9e3779b1) ^ Math.imul(w2, 0x85ebca6b) ^ w1 ^ w0) | 0;
    const hit = this.hosts6.get(key);
    if (
      hit !== undefined &&
      hit.w0 === w0 &&
      hit.w1 === w1 &&
      hit.w2 === w2 &&
      hit.w3 === w3 &&
      hit.scope === scope
    ) {
      return hit.host;
    }
    const host = this.udp.formatAddress(6, buf.subarray(o, o + 16), scope >>> 0);
    if (this.hosts6.size >= ADDRESS_CACHE_ENTRIES) this.hosts6.clear();
    this.hosts6.set(key, { w0, w1, w2, w3, scope, host });
    return host;
  }

  /** One recvmmsg() batch: records as described in NativeUdp.startReading. */
  private onDatagrams(fd: number, buf: Buffer, len: number, count: number): void {
    this.inBatch = true;
    try {
      this.deliver(fd, buf, len, count);
    } finally {
      try {
        // What the batch produced (cells staged per link, packets for the
        // TUN) goes out now, and its datagrams join this stage.
        if (this.fd === fd) this.onBatchEnd?.();
      } finally {
        this.inBatch = false;
        this.flushStage();
      }
    }
  }

  private deliver(fd: number, buf: Buffer, len: number, count: number): void {
    let o = 0;
    let failed = false;
    let failure: unknown;
    for (let i = 0; i < count && o < len; i++) {
      // A receiver that closed the transport gets nothing more.
      const receiver = this.receiver;
      if (this.fd !== fd || receiver === undefined) break;
      let host: string;
      if (buf[o] === 4) {
        host = this.host4(buf, o + 1);
        o += 5;
      } else {
        host = this.host6(buf, o + 1);
        o += 21;
      }
      const port = ((buf[o] as number) << 8) | (buf[o + 1] as number);
      const n = ((buf[o + 2] as number) << 8) | (buf[o + 3] as number);
      // A run the kernel coalesced (UDP GRO): datagrams of `seg` bytes,
      // the last one possibly shorter.
      const seg = ((buf[o + 4] as number) << 8) | (buf[o + 5] as number);
      o += 6;
      const end = o + n;
      const step = seg > 0 ? seg : Math.max(n, 1);
      for (let d = o; d === o || d < end; d += step) {
        const datagram = buf.subarray(d, Math.min(d + step, end));
        // One throwing delivery must not lose the rest of the batch (as
        // with node:dgram, where each datagram was its own event); the
        // first error is rethrown after the batch and reaches
        // 'uncaughtException'.
        try {
          receiver(datagram, host, port);
        } catch (e) {
          if (!failed) {
            failed = true;
            failure = e;
          }
        }
        if (this.fd !== fd || this.receiver === undefined) break;
      }
      o = end;
    }
    if (failed) throw failure;
  }
}

function destinationOf(family: 4 | 6, addr: Buffer, scopeId: number): Destination {
  const head = Buffer.alloc(family === 4 ? 5 : 21);
  head[0] = family;
  addr.copy(head, 1);
  if (family === 6) head.writeUInt32BE(scopeId >>> 0, 17);
  return { family, addr, scopeId, head };
}

/** Throw RangeError, as NativeUdp.sendBatch does, for a malformed batch. */
function checkPacked(buf: Buffer, len: number): void {
  if (len > buf.length) throw new RangeError(`packed batch: len ${len} > ${buf.length} bytes`);
  let o = 0;
  while (o < len) {
    if (len - o < 2) {
      throw new RangeError(`packed batch: truncated length prefix at offset ${o} (len ${len})`);
    }
    const n = ((buf[o] as number) << 8) | (buf[o + 1] as number);
    if (n > len - o - 2) {
      throw new RangeError(
        `packed batch: datagram at offset ${o} claims ${n} bytes, only ${len - o - 2} remain`,
      );
    }
    o += 2 + n;
  }
}

/** Number of whole [u16 len][bytes] entries in `len` bytes of `buf`. */
export function countPacked(buf: Buffer, len: number): number {
  let o = 0;
  let count = 0;
  while (o + 2 <= len) {
    o += 2 + buf.readUInt16BE(o);
    if (o > len) break;
    count += 1;
  }
  return count;
}

export interface MemoryNetworkOptions {
  /** Uniform [0, 1) draws for the loss model (default Math.random). */
  random?: () => number;
  /**
   * Deliver on this clock after `latencyMs` instead of on the next turn
   * of the event loop: with a VirtualClock the network is then
   * deterministic and time moves only when the test or simulator moves it.
   */
  clock?: Clock;
  /** One-way delay of a datagram from one host to another (default 0: the next instant). */
  latencyMs?: (fromHost: string, toHost: string) => number;
}

/**
 * In-memory twin: transports on one MemoryNetwork reach each other by
 * "host:port". Delivery is asynchronous: on the next turn of the event
 * loop (a microtask-free setImmediate queue), or with a clock after the
 * latency model's delay, in send order between any two hosts whose
 * latency does not change. Optionally lossy (lossRate).
 */
export class MemoryNetwork {
  readonly endpoints = new Map<string, MemoryTransport>();
  lossRate = 0;
  delivered = 0;
  dropped = 0;
  private readonly random: () => number;
  private readonly clock: Clock | null;
  private readonly latencyMs: ((fromHost: string, toHost: string) => number) | null;

  constructor(options: MemoryNetworkOptions | (() => number) = {}) {
    const o = typeof options === 'function' ? { random: options } : options;
    this.random = o.random ?? Math.random;
    this.clock = o.clock ?? null;
    this.latencyMs = o.latencyMs ?? null;
  }

  transport(host: string, port: number): MemoryTransport {
    return new MemoryTransport(this, host, port);
  }

  /** Sees every datagram sent (before loss), as a wire capture would. */
  tap:
    | ((fromHost: string, fromPort: number, host: string, port: number, data: Buffer) => void)
    | null = null;

  deliver(fromHost: string, fromPort: number, host: string, port: number, data: Buffer): void {
    this.tap?.(fromHost, fromPort, host, port, data);
    if (this.lossRate > 0 && this.random() < this.lossRate) {
      this.dropped += 1;
      return;
    }
    const key = `${host}:${port}`;
    if (!this.endpoints.has(key)) {
      this.dropped += 1;
      return;
    }
    const copy = Buffer.from(data);
    const arrive = (): void => {
      // The receiver may have closed while the datagram was in flight.
      const target = this.endpoints.get(key);
      if (!target) {
        this.dropped += 1;
        return;
      }
      this.delivered += 1;
      target.receive(copy, fromHost, fromPort);
    };
    if (this.clock) this.clock.setTimer(this.latencyMs?.(fromHost, host) ?? 0, arrive);
    else setImmediate(arrive);
  }
}

export class MemoryTransport implements DatagramTransport {
  private receiver: DatagramReceiver | undefined;
  private onBatchEnd: (() => void) | undefined;

  constructor(
    private readonly network: MemoryNetwork,
    private readonly host: string,
    private readonly port: number,
  ) {}

  start(receiver: DatagramReceiver, onBatchEnd?: () => void): Promise<void> {
    const key = `${this.host}:${this.port}`;
    if (this.network.endpoints.has(key)) return Promise.reject(new Error(`${key} in use`));
    this.receiver = receiver;
    this.onBatchEnd = onBatchEnd;
    this.network.endpoints.set(key, this);
    return Promise.resolve();
  }

  receive(data: Buffer, host: string, port: number): void {
    if (!this.receiver) return;
    this.receiver(data, host, port);
    this.onBatchEnd?.();
  }

  address(): { host: string; port: number } {
    return { host: this.host, port: this.port };
  }

  sendPacked(packed: Buffer, len: number, host: string, port: number): void {
    let o = 0;
    while (o + 2 <= len) {
      const n = packed.readUInt16BE(o);
      o += 2;
      if (o + n > len) break;
      this.sendOne(packed.subarray(o, o + n), host, port);
      o += n;
    }
  }

  sendOne(data: Buffer, host: string, port: number): void {
    if (!this.receiver) return;
    this.network.deliver(this.host, this.port, host, port, data);
  }

  close(): void {
    this.receiver = undefined;
    this.network.endpoints.delete(`${this.host}:${this.port}`);
  }
}
