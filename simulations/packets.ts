/**
 * The traffic of the simulation: IPv4/UDP packets from a client's inner
 * address to port 7 of a host behind its exit, and the two MemoryDevices
 * at the ends. The exit's device plays the kernel and the destination: it
 * answers every UDP packet to port 7 with the same payload, addresses and
 * ports swapped (as the circuit-memory unit test does by hand). A client's
 * device checks and counts what comes back.
 *
 * Both drain MemoryDevice.written as soon as the node writes, so nothing
 * grows with the length of the run.
 */
import { MemoryDevice } from '../src/tun/device.js';

export const UDP4_HEADER_BYTES = 28;
export const ECHO_PORT = 7;
const SOURCE_PORT = 40000;
/** Payload: magic, client index, sequence number, send time (ms, float64). */
const MAGIC = 0x53494d31; // "SIM1"
export const PAYLOAD_HEADER_BYTES = 20;
/** Replies waiting for the next turn of the loop, at most (more are dropped, counted). */
const ECHO_QUEUE_PACKETS = 4096;
/** Sequence numbers remembered per client to spot a duplicate reply. */
const SEEN_WINDOW = 1024;
/** Round-trip samples kept (reservoir sampling over the whole run). */
export const RTT_SAMPLES = 4096;

function checksum(b: Buffer, start: number, end: number): number {
  let sum = 0;
  for (let i = start; i < end; i += 2) sum += b.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** An IPv4/UDP packet; `size` payload bytes, the first PAYLOAD_HEADER_BYTES of which are set. */
export function probePacket(
  src: Buffer,
  dst: Buffer,
  size: number,
  client: number,
  seq: number,
  sentAt: number,
): Buffer {
  const p = Buffer.alloc(UDP4_HEADER_BYTES + size);
  p[0] = 0x45;
  p.writeUInt16BE(p.length, 2);
  p.writeUInt16BE(seq & 0xffff, 4);
  p[8] = 64;
  p[9] = 17;
  src.copy(p, 12);
  dst.copy(p, 16);
  p.writeUInt16BE(checksum(p, 0, 20), 10);
  p.writeUInt16BE(SOURCE_PORT, 20);
  p.writeUInt16BE(ECHO_PORT, 22);
  p.writeUInt16BE(8 + size, 24);
  p.writeUInt32BE(MAGIC, 28);
  p.writeUInt32BE(client, 32);
  p.writeUInt32BE(seq, 36);
  p.writeDoubleBE(sentAt, 40);
  return p;
}

/** The echo reply to a probe: addresses and ports swapped, or null if it is not one. */
export function echoReply(p: Buffer): Buffer | null {
  if (p.length < UDP4_HEADER_BYTES || p[0] !== 0x45 || p[9] !== 17) return null;
  if (p.readUInt16BE(22) !== ECHO_PORT) return null;
  const r = Buffer.from(p);
  p.copy(r, 12, 16, 20);
  p.copy(r, 16, 12, 16);
  r.writeUInt16BE(p.readUInt16BE(22), 20);
  r.writeUInt16BE(p.readUInt16BE(20), 22);
  r.writeUInt16BE(0, 10);
  r.writeUInt16BE(checksum(r, 0, 20), 10);
  return r;
}

/** The exit's device: the destination network behind the exit, an echo service. */
export class EchoHostDevice extends MemoryDevice {
  echoed = 0;
  ignored = 0;
  queueDrops = 0;
  private queue: Buffer[] = [];
  private scheduled = false;

  override writePacked(packed: Buffer, len: number): number {
    const n = super.writePacked(packed, len);
    for (const p of this.written.splice(0)) {
      const r = echoReply(p);
      if (!r) this.ignored += 1;
      else if (this.queue.length >= ECHO_QUEUE_PACKETS) this.queueDrops += 1;
      else this.queue.push(r);
    }
    // The answer comes later, as from a kernel: never inside the node's own call.
    if (this.queue.length > 0 && !this.scheduled) {
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        const batch = this.queue;
        this.queue = [];
        if (this.closed || batch.length === 0) return;
        this.echoed += batch.length;
        this.inject(batch);
      });
    }
    return n;
  }
}

/** What one client's device saw come back. */
export interface EchoStats {
  echoed: number;
  duplicates: number;
  foreign: number;
}

/** A client's device: counts the echoes of its own probes. */
export class ClientDevice extends MemoryDevice {
  readonly stats: EchoStats = { echoed: 0, duplicates: 0, foreign: 0 };
  private readonly seen = new Int32Array(SEEN_WINDOW).fill(-1);

  constructor(
    name: string,
    private readonly index: number,
    private readonly onEcho: (sentAt: number) => void,
  ) {
    super(name);
  }

  override writePacked(packed: Buffer, len: number): number {
    const n = super.writePacked(packed, len);
    for (const p of this.written.splice(0)) {
      if (
        p.length < UDP4_HEADER_BYTES + PAYLOAD_HEADER_BYTES ||
        p.readUInt16BE(20) !== ECHO_PORT ||
        p.readUInt32BE(28) !== MAGIC ||
        p.readUInt32BE(32) !== this.index
      ) {
        this.stats.foreign += 1;
        continue;
      }
      const seq = p.readUInt32BE(36);
      const slot = seq % SEEN_WINDOW;
      if (this.seen[slot] === (seq | 0)) {
        this.stats.duplicates += 1;
        continue;
      }
      this.seen[slot] = seq | 0;
      this.stats.echoed += 1;
      this.onEcho(p.readDoubleBE(40));
    }
    return n;
  }
}
