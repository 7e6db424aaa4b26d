/**
 * The packet-device seam: a source and sink of IP packets in batches
 * (packed [u16 len][packet]...), as wireguard-go's tun.Device. LinuxTun is
 * the real one; MemoryDevice the in-memory twin for tests and simulation.
 */
export type PacketBatchHandler = (packed: Buffer, len: number, count: number) => void;

export interface PacketDevice {
  readonly name: string;
  /** Start delivering batches read from the device. `packed` is valid during the call. */
  start(onPackets: PacketBatchHandler): void;
  /** Write a packed batch; returns packets written (the rest dropped). */
  writePacked(packed: Buffer, len: number): number;
  close(): void;
}

/** In-memory twin: inject() plays the kernel sending, `written` what the node wrote. */
export class MemoryDevice implements PacketDevice {
  readonly written: Buffer[] = [];
  private handler: PacketBatchHandler | undefined;
  closed = false;

  constructor(readonly name = 'mem0') {}

  start(onPackets: PacketBatchHandler): void {
    this.handler = onPackets;
  }

  inject(packets: Buffer[]): void {
    const len = packets.reduce((s, p) => s + 2 + p.length, 0);
    const buf = Buffer.alloc(len);
    let o = 0;
    for (const p of packets) {
      buf.writeUInt16BE(p.length, o);
      p.copy(buf, o + 2);
      o += 2 + p.length;
    }
    this.handler?.(buf, len, packets.length);
  }

  writePacked(packed: Buffer, len: number): number {
    let o = 0;
    let n = 0;
    while (o + 2 <= len) {
      const l = packed.readUInt16BE(o);
      if (o + 2 + l > len) break;
      this.written.push(Buffer.from(packed.subarray(o + 2, o + 2 + l)));
      o += 2 + l;
      n += 1;
    }
    return n;
  }

  close(): void {
    this.closed = true;
    this.handler = undefined;
  }
}
